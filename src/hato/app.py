"""The composition root: reads settings, builds every room, binds the listeners, runs.

May import every room. Nothing else imports this module except the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hato.accounts import UserStore
from hato.delivery.local import AliasTable, LocalDomain, RecipientResolver
from hato.delivery.maildir import MaildirCourier
from hato.delivery.router import RoutingCourier
from hato.model import Role, SystemClock, logfmt
from hato.queue import Queue, QueueRunner, Schedule
from hato.server.session import ListenerState, SessionContext, SmtpSession
from hato.smtp import ServerSettings

if TYPE_CHECKING:
    from hato.config import Settings

log = logging.getLogger("hato")

EX_OK = 0
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
DRAIN_SECONDS = 30.0


class StartupError(Exception):
    """A problem that stops start-up; the message says what and how to fix it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- logging: one line per event on stderr (DESIGN.md), text or JSON lines ----


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger("hato")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# ---- building the rooms ----


def server_settings(settings: Settings, role: Role) -> ServerSettings:
    limits = settings.limits
    return ServerSettings(
        hostname=settings.server.hostname,
        max_message_size=limits.max_message_size,
        max_recipients=limits.max_recipients,
        max_bad_commands=limits.max_bad_commands,
        max_text_line=limits.max_text_line,
    )


def build_resolver(settings: Settings, users: UserStore) -> RecipientResolver:
    domains = [
        LocalDomain(
            name=d.name,
            catch_all=str(d.catch_all) if d.catch_all else None,
            accept_any=d.accept_any,
            aliases={k: tuple(str(t) for t in v) for k, v in d.aliases.items()},
        )
        for d in settings.domains
    ]
    aliases = AliasTable.load(settings.local.aliases_file) if settings.local.aliases_file else None
    return RecipientResolver(
        domains, users, alias_file=aliases, delimiter=settings.local.recipient_delimiter
    )


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One server per data directory: the queue and the mailboxes are ours alone."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(data_dir / "hato.lock", "a+")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise StartupError(
            f"server.data_dir: cannot create {data_dir}: {exc.strerror}; "
            "choose a writable directory (or set HATO_HOME)",
            EX_CANTCREAT,
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise StartupError(
            f"server.data_dir: {data_dir} is in use by another hato process; "
            "stop it or give this one its own data_dir",
            EX_TEMPFAIL,
        ) from exc
    try:
        yield
    finally:
        handle.close()


async def _bind(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    factory: Callable[[], asyncio.BaseProtocol],
) -> asyncio.Server:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return await loop.create_server(
            factory,
            host,
            port,
            backlog=4096,  # a large backlog: slow clients down rather than refuse them
            reuse_address=True,
        )
    except OSError as exc:
        raise StartupError(
            f"listener address {address}: cannot listen: {exc.strerror}; "
            "pick a free port or stop what uses it",
            EX_CANTCREAT,
        ) from exc


async def run(settings: Settings, source: str) -> None:
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    data_dir = Path(settings.server.data_dir)
    node_id = f"{socket.gethostname()}:{os.getpid()}"
    for listener in settings.listeners:
        if listener.role is not Role.MX:
            raise StartupError(
                f'listener role "{listener.role.value}" ({listener.address}) is not supported by '
                'this version yet; use role = "mx"',
                EX_CONFIG,
            )
    queue = await Queue.open(
        data_dir / "queue", clock=clock, node_id=node_id, min_free=settings.queue.min_free_space
    )
    for problem in queue.problems:
        log.error(logfmt("queue-problem", detail=problem))
    users = UserStore(data_dir / "users.db")
    resolver = build_resolver(settings, users)
    maildir = MaildirCourier(data_dir / "mailboxes", settings.server.hostname, clock=clock)
    courier = RoutingCourier(resolver.is_local_domain, maildir)
    runner = QueueRunner(queue, courier, clock=clock, schedule=Schedule())
    runner_task: asyncio.Task[None] | None = None

    states: list[ListenerState] = []
    servers: list[asyncio.Server] = []
    try:
        for listener in settings.listeners:
            role = listener.role
            state = ListenerState(
                name=f"{role.value}@{listener.address}",
                max_connections=listener.max_connections,
                max_per_ip=listener.max_connections_per_ip,
            )
            ctx = SessionContext(
                role=role,
                settings=server_settings(settings, role),
                queue=queue,
                resolver=resolver,
                clock=clock,
                idle_timeout=float(settings.limits.idle_timeout),
                session_timeout=float(settings.limits.session_timeout),
                listener=state,
            )
            factory = _session_factory(ctx)
            servers.append(await _bind(loop, listener.host, listener.port, factory))
            states.append(state)
            log.info(logfmt("listening", role=role.value, address=listener.address))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log.warning(
                logfmt("reload-unsupported", detail="SIGHUP reload is not supported yet; restart")
            ),
        )
        log.info(
            logfmt(
                "ready",
                source=source,
                data_dir=data_dir,
                hostname=settings.server.hostname,
                domains=",".join(d.name for d in settings.domains),
            )
        )
        async with asyncio.TaskGroup() as tasks:
            runner_task = tasks.create_task(runner.run())
            await stop.wait()
            log.info(logfmt("stopping", detail="draining sessions"))
            for server in servers:
                server.close()
            await _drain(states)
            runner_task.cancel()
    finally:
        for server in servers:
            server.close()
        # The runner must stop before the queue closes (it writes outcomes through it).
        if runner_task is not None and not runner_task.done():
            runner_task.cancel()
        await queue.close()
        maildir.close()
        users.close()


def _session_factory(ctx: SessionContext) -> Callable[[], SmtpSession]:
    return lambda: SmtpSession(ctx)


async def _drain(states: list[ListenerState]) -> None:
    """SIGTERM: stop accepting, let transactions in progress finish, then close."""
    for state in states:
        for session in list(state.sessions):
            session.drain()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            for state in states:
                await state.empty.wait()
    for state in states:
        for session in list(state.sessions):
            if session.transport is not None:
                session.transport.abort()


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def serve(settings: Settings, *, source: str) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code follows sysexits.h."""
    configure_logging(settings.server.log_format, settings.server.log_level)
    fast = _use_uvloop()
    log.info(logfmt("starting", version=_version(), source=source, uvloop=fast, pid=os.getpid()))
    try:
        with data_dir_lock(Path(settings.server.data_dir)):
            asyncio.run(run(settings, source))
    except StartupError as exc:
        log.error(logfmt("startup-failed", detail=str(exc)))
        print(f"hato: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EX_OK
    log.info(logfmt("stopped"))
    return EX_OK


def _version() -> str:
    from hato import __version__

    return __version__
