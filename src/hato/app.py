"""The composition root: reads settings, builds every room, binds the listeners, runs.

May import every room. Nothing else imports this module except the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hato.accounts import UserStore
from hato.crypto import KEYS_DB, KeyStore
from hato.crypto.wkd import wkd_app
from hato.dbcache import CachedKeys, CachedUsers
from hato.delivery.known import KnownMailboxes
from hato.delivery.local import AliasTable, LocalDomain, RecipientResolver, Resolution
from hato.delivery.maildir import MaildirCourier
from hato.delivery.owner import OwnerError, resolve_owner
from hato.delivery.router import RoutingCourier
from hato.dns import DnsCache, DnsPythonResolver
from hato.logsetup import configure_logging
from hato.model import (
    Address,
    Clock,
    Courier,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    Role,
    SystemClock,
    UserDirectory,
    logfmt,
)
from hato.outbound_setup import build_outbound
from hato.policy import (
    LIMITS_DB,
    AuthThrottle,
    AuthThrottleSettings,
    ClientNetwork,
    ListenerNetworkRules,
    NetworkTable,
    SendLimiter,
    SendLimitSettings,
)
from hato.queue import Queue, QueueRunner, Schedule
from hato.queue.admin import LiveAdmin
from hato.server import control
from hato.server.auth import ScramDecoy
from hato.server.context import ListenerState, SessionContext
from hato.server.datadir import DataDirError, locked, server_secret
from hato.server.direct import DirectDelivery
from hato.server.inbound import Enforcement, InboundChecker
from hato.server.metrics import Metrics, MetricsBindError, bind_metrics, refresh_queue
from hato.server.privileges import PrivilegeError, drop_privileges, lookup_identity
from hato.server.session import SmtpSession
from hato.server.signing import OutboundSigner, load_sealers, load_signers
from hato.server.systemd import Notifier, run_watchdog, watchdog_interval
from hato.server.tls import ReloadingContext, TLSConfigError, ensure_self_signed, server_context
from hato.smtp import ServerSettings

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.config.sections import ListenerSettings

log = logging.getLogger("hato")

EX_OK = 0
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78
DRAIN_SECONDS = 30.0
TLS_WATCH_SECONDS = 30.0  # how often certificate files are checked for a renewal


class StartupError(Exception):
    """A problem that stops start-up; the message says what and how to fix it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- building the rooms ----


def server_settings(settings: Settings, role: Role, tls: bool) -> ServerSettings:
    """What the core of a listener of this role offers and enforces."""
    limits = settings.limits
    submission = role is not Role.MX
    return ServerSettings(
        hostname=settings.server.hostname,
        max_message_size=limits.max_message_size,
        max_recipients=limits.max_recipients,
        max_bad_commands=limits.max_bad_commands,
        max_text_line=limits.max_text_line,
        # RFC 3207 on mx when a certificate is configured; always on port 587.
        offer_starttls=tls and role is not Role.SUBMISSIONS,
        # RFC 4954 / RFC 6409: AUTH only on submission roles (never on mx), only after TLS.
        auth_mechanisms=tuple(settings.auth.mechanisms) if submission else (),
        require_auth=submission,  # RFC 6409 §4.3 / RFC 4954 §6: 530 5.7.0 before AUTH
        require_tls=role is Role.SUBMISSION,  # RFC 3207 §4: 530 5.7.0 before STARTTLS
        dsn=True,  # RFC 3461: NOTIFY/ORCPT/RET/ENVID are kept and honoured
    )


def auth_throttle_settings(settings: Settings) -> AuthThrottleSettings:
    a = settings.auth
    return AuthThrottleSettings(
        failure_delay=a.failure_delay,
        max_failure_delay=a.max_failure_delay,
        max_failures=a.max_failures,
        max_account_failures=a.max_account_failures,
        failure_window=a.failure_window,
        block_time=a.block_time,
    )


def send_limit_settings(settings: Settings) -> SendLimitSettings:
    limits = settings.limits
    return SendLimitSettings(
        messages_per_hour=limits.messages_per_hour,
        recipients_per_hour=limits.recipients_per_hour,
        spike_recipients=limits.spike_recipients,
        spike_window=limits.spike_window,
        spike_hold=limits.spike_hold,
        hold_time=limits.hold_time,
    )


def send_as_grants(settings: Settings) -> dict[Address, frozenset[Address]]:
    """[[domain]] send_as: the extra sender addresses of each account, lower-case."""
    grants: dict[Address, set[Address]] = {}
    for domain in settings.domains:
        for local, targets in domain.send_as.items():
            user = Address(local.lower(), domain.name.lower())
            grants.setdefault(user, set()).update(
                Address(t.local.lower(), t.domain.lower()) for t in targets
            )
    return {user: frozenset(addresses) for user, addresses in grants.items()}


def build_tls(settings: Settings, data_dir: Path) -> ReloadingContext | None:
    """The configured certificate, or a self-signed one when a submission listener needs TLS
    and none is configured (the embedded default)."""
    try:
        if settings.tls is not None:
            return ReloadingContext.load(Path(settings.tls.cert), Path(settings.tls.key))
        if all(listener.role is Role.MX for listener in settings.listeners):
            return None
        cert, key = ensure_self_signed(data_dir / "tls", settings.server.hostname)
        log.warning(
            logfmt(
                "tls-self-signed",
                cert=cert,
                detail="no [tls] configured: using a self-signed certificate",
            )
        )
        return ReloadingContext.load(cert, key)
    except TLSConfigError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc


def implicit_tls_context(tls: ReloadingContext) -> ssl.SSLContext:
    """RFC 8314 port 465: the listener's context hands each handshake the current (reloaded)
    context through the SNI callback, which runs for every ClientHello."""
    front = server_context(tls.cert, tls.key)

    def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sock.context = tls.current

    front.sni_callback = pick
    return front


def mailbox_owner(settings: Settings) -> tuple[int, int] | None:
    """[local] mailbox_owner as (uid, gid), checked usable now (after the privilege drop)."""
    if settings.local.mailbox_owner is None:
        return None
    try:
        owner = resolve_owner(settings.local.mailbox_owner, settings.mailboxes)
    except OwnerError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return owner.uid, owner.gid


def build_resolver(settings: Settings, users: UserStore | UserDirectory) -> RecipientResolver:
    """The RCPT-time resolver; a UserStore's answers are cached until users.db changes."""
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
        domains,
        CachedUsers(users, users.path) if isinstance(users, UserStore) else users,
        alias_file=aliases,
        delimiter=settings.local.recipient_delimiter,
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (before privileges are dropped)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(
            f"listener address {address}: cannot listen: {exc.strerror}; "
            "pick a free port or stop what uses it",
            EX_CANTCREAT,
        ) from exc
    sock.listen(4096)  # a large backlog: slow clients down rather than refuse them
    sock.setblocking(False)
    return sock


async def _bind(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    factory: Callable[[], asyncio.BaseProtocol],
    tls: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    handshake = 30.0 if tls is not None else None
    try:
        if sock is not None:  # bound by the supervisor, shared by the workers
            return await loop.create_server(
                factory, sock=sock, backlog=4096, ssl=tls, ssl_handshake_timeout=handshake
            )
        return await loop.create_server(
            factory,
            host,
            port,
            backlog=4096,  # a large backlog: slow clients down rather than refuse them
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=handshake,
        )
    except OSError as exc:
        raise StartupError(
            f"listener address {address}: cannot listen: {exc.strerror}; "
            "pick a free port or stop what uses it",
            EX_CANTCREAT,
        ) from exc


@dataclass(slots=True)
class Shared:
    """The long-lived pieces every listener shares; a reload (SIGHUP) keeps them."""

    clock: SystemClock
    data_dir: Path
    queue: Queue
    dns: DnsPythonResolver
    users: UserStore
    keys: KeyStore
    tls: ReloadingContext | None
    throttle: AuthThrottle
    limiter: SendLimiter
    verify_slots: asyncio.Semaphore
    resolver: CurrentResolver


class CurrentResolver:
    """The recipient resolver of the configuration in force; a reload swaps `current`, and
    every holder (sessions, the routing courier, local submission) sees the new one."""

    def __init__(self, current: RecipientResolver) -> None:
        self.current = current

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return self.current.resolve(address, wildcards=wildcards)

    def owns(self, user: Address, address: Address) -> bool:
        return self.current.owns(user, address)

    def is_local_domain(self, domain: str) -> bool:
        return self.current.is_local_domain(domain)


def configured_fields(
    settings: Settings, shared: Shared, listener: ListenerSettings
) -> dict[str, Any]:
    """Everything in a listener's SessionContext that the configuration decides."""
    role = listener.role
    check = settings.authcheck
    authserv_id = check.authserv_id or settings.server.hostname
    inbound = None
    if check.inbound and role is Role.MX:
        inbound = InboundChecker(
            shared.dns,
            authserv_id=authserv_id,
            clock=shared.clock,
            enforcement=Enforcement(check.dmarc.value),
            budget=check.budget,
        )
    selectors = {d.name: d.dkim_selector for d in settings.domains}
    signers = load_signers(shared.data_dir / "dkim", selectors, shared.clock) if check.sign else {}
    return {
        "settings": server_settings(settings, role, shared.tls is not None),
        "idle_timeout": float(settings.limits.idle_timeout),
        "hop_limit": settings.limits.hopcount_limit,
        "session_timeout": float(settings.limits.session_timeout),
        "postmaster_domain": settings.domains[0].name,
        "network_rules": ListenerNetworkRules(
            tuple(listener.refuse_networks), tuple(listener.allow_networks)
        ),
        "networks": NetworkTable.of(
            ClientNetwork(n.name, tuple(n.cidrs), n.dnsbl) for n in settings.networks
        ),
        "send_as": send_as_grants(settings),
        "inbound": inbound,
        "authserv_id": authserv_id,
        "signer": OutboundSigner(signers) if role is not Role.MX else None,
        "sealers": load_sealers(signers, authserv_id, shared.clock) if role is Role.MX else {},
    }


class MeasuredCourier:
    """The courier the runner calls, counting each outcome for /metrics."""

    def __init__(
        self, inner: Courier, metrics: Metrics, clock: Clock, is_local: Callable[[str], bool]
    ) -> None:
        self._inner, self._metrics, self._clock, self._is_local = inner, metrics, clock, is_local

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        outcomes = await self._inner.deliver(message, recipients)
        self._metrics.deliveries_of(
            message, recipients, outcomes, now=self._clock.now(), is_local=self._is_local
        )
        return outcomes


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """One process of several (hato.supervisor): its sockets, its name, what it runs."""

    index: int
    sockets: dict[int, socket.socket]  # listener index -> the bound socket it serves
    node_id: str


async def run(settings: Settings, source: str, worker: WorkerRole | None = None) -> None:
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    data_dir = Path(settings.server.data_dir)
    node_id = worker.node_id if worker else f"{socket.gethostname()}:{os.getpid()}"
    first = worker is None or worker.index == 0  # runs the control socket
    tls = build_tls(settings, data_dir)  # read as root: certbot's keys are root-only
    try:
        scram = ScramDecoy(server_secret(data_dir), settings.auth.scram_iterations)
    except DataDirError as exc:
        raise StartupError(str(exc), exc.exit_code) from exc
    if worker is not None:
        sockets = worker.sockets
    else:
        sockets = {n: listen_socket(lst.host, lst.port) for n, lst in enumerate(settings.listeners)}
    metrics = Metrics()
    metrics_server = None
    if settings.metrics.address is not None and first:
        try:
            metrics_server = await bind_metrics(settings.metrics.address, metrics)
        except MetricsBindError as exc:
            raise StartupError(str(exc), EX_CANTCREAT) from exc
    wkd_runner = None
    if settings.wkd.address is not None and first:
        wkd_runner = await serve_wkd(settings, data_dir, tls)
    try:
        # Ports 25/465/587 are bound; from here on we need no privilege (issue 7).
        drop_privileges(settings.server.user, settings.server.group, data_dir=data_dir)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    notifier = Notifier.from_env()
    queue = await Queue.open(
        data_dir / "queue",
        clock=clock,
        node_id=node_id,
        min_free=settings.queue.min_free_space,
        recover=worker is None,  # with workers, the supervisor recovered before starting them
        id_slot=worker.index if worker is not None else 0,
    )
    for problem in queue.problems:
        log.error(logfmt("queue-problem", detail=problem))
    users = UserStore(data_dir / "users.db", scram_iterations=settings.auth.stored_scram_iterations)
    shared = Shared(
        clock=clock,
        data_dir=data_dir,
        queue=queue,
        dns=DnsPythonResolver(
            settings.dns.nameservers, timeout=settings.dns.timeout, cache=DnsCache(clock)
        ),
        users=users,
        keys=KeyStore.in_data_dir(data_dir),  # users' public keys (issue 6)
        tls=tls,
        throttle=AuthThrottle(clock, auth_throttle_settings(settings)),
        limiter=SendLimiter(clock, send_limit_settings(settings), data_dir / LIMITS_DB),
        verify_slots=asyncio.Semaphore(2),  # argon2id checks at once (~64 MiB, ~150 ms each)
        resolver=CurrentResolver(build_resolver(settings, users)),
    )
    resolver = shared.resolver
    keys = CachedKeys(shared.keys, data_dir / KEYS_DB)  # asked at every RCPT, rarely changed
    maildir = MaildirCourier(
        settings.mailboxes, settings.server.hostname, clock=clock, owner=mailbox_owner(settings)
    )
    outbound = build_outbound(settings, shared.dns, clock)
    counter = control.OutcomeCounter()
    local = KnownMailboxes(maildir, resolver)  # an alias target without an account bounces
    routing = RoutingCourier(
        resolver.is_local_domain, local, outbound, hop_limit=settings.limits.hopcount_limit
    )
    courier = control.CountingCourier(
        MeasuredCourier(routing, metrics, clock, resolver.is_local_domain), counter
    )
    runner = QueueRunner(
        queue, courier, clock=clock, schedule=Schedule(), hostname=settings.server.hostname
    )
    direct = (
        DirectDelivery(
            control.CountingCourier(
                MeasuredCourier(local, metrics, clock, resolver.is_local_domain), counter
            ),
            resolver.is_local_domain,
            clock,
        )
        if settings.queue.direct_local_delivery
        else None
    )
    runner_task: asyncio.Task[None] | None = None
    states: list[ListenerState] = []
    contexts: list[SessionContext] = []
    servers: list[asyncio.Server] = []
    try:
        for number, listener in enumerate(settings.listeners):
            if number not in sockets:
                continue  # another worker serves it (submission stays in the first)
            role = listener.role
            state = ListenerState(
                name=f"{role.value}@{listener.address}",
                max_connections=listener.max_connections,
                max_per_ip=listener.max_connections_per_ip,
            )
            implicit = role is Role.SUBMISSIONS
            ctx = SessionContext(
                role=role,
                queue=queue,
                resolver=resolver,
                clock=clock,
                listener=state,
                tls=tls,
                implicit_tls=implicit,
                accounts=users if role is not Role.MX else None,
                verify_slots=shared.verify_slots,
                scram=scram,
                # An AUTH block never extends to port 25: mail to the client's owner still
                # arrives while its submission is blocked (and mx offers no AUTH to block).
                throttle=shared.throttle if role is not Role.MX else None,
                limiter=shared.limiter,
                dns=shared.dns,
                keys=keys,
                metrics=metrics.role(role),
                direct=direct,
                **configured_fields(settings, shared, listener),
            )
            factory = _session_factory(ctx)
            wrap = implicit_tls_context(tls) if implicit and tls is not None else None
            servers.append(
                await _bind(loop, listener.host, listener.port, factory, wrap, sockets[number])
            )
            states.append(state)
            contexts.append(ctx)
            log.info(logfmt("listening", role=role.value, address=listener.address))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        current = settings

        def reload() -> None:
            nonlocal current
            notifier.reloading()
            current = _reload(current, source, shared, contexts)
            notifier.ready("reloaded")

        loop.add_signal_handler(signal.SIGHUP, reload)
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
            watcher = tasks.create_task(_watch_tls(tls)) if tls is not None else None
            sweeper = tasks.create_task(outbound.run_sweeper())
            submitter = control.LocalSubmitter(
                queue,
                resolver,
                hostname=settings.server.hostname,
                domain=settings.domains[0].name,
                clock=clock,
                max_message_size=settings.limits.max_message_size,
            )
            controller = control.ControlServer(
                queue=queue,
                runner=runner,
                submit=submitter,
                clock=clock,
                hostname=settings.server.hostname,
                domain=settings.domains[0].name,
                counter=counter,
                max_message_size=settings.limits.max_message_size,
                info=lambda: {"listeners": [str(lst.address) for lst in settings.listeners]},
            )
            # hato queue / hato status / hato-sendmail talk to this (root only, mode 0600).
            control_task = tasks.create_task(
                control.serve(
                    data_dir / "control.sock", controller, submit_path=settings.server.submit_socket
                )
                if first
                else asyncio.Event().wait()
            )
            for role in {lst.role for lst in settings.listeners}:
                metrics.open_sessions(role, _open_sessions(states, contexts, role))
            gauges = tasks.create_task(
                refresh_queue(metrics, LiveAdmin(queue, clock.now, log.info).stats, clock.now)
            )
            interval = watchdog_interval()
            pets = tasks.create_task(
                run_watchdog(notifier, interval) if interval else asyncio.Event().wait()
            )
            # What start-up built lives as long as the process: keep it out of every garbage
            # collection from now on (a full collection otherwise walks all of it again).
            gc.freeze()
            notifier.ready("accepting mail")
            await stop.wait()
            notifier.stopping("draining sessions")
            log.info(logfmt("stopping", detail="draining sessions"))
            for server in servers:
                server.close()
            await _drain(states)
            runner_task.cancel()
            if watcher is not None:
                watcher.cancel()
            sweeper.cancel()
            control_task.cancel()
            gauges.cancel()
            pets.cancel()
    finally:
        for server in servers:
            server.close()
        # The runner must stop before the queue closes (it writes outcomes through it).
        if runner_task is not None and not runner_task.done():
            runner_task.cancel()
        await queue.close()
        await outbound.aclose()
        maildir.close()
        users.close()
        shared.keys.close()
        shared.limiter.close()
        if metrics_server is not None:
            await metrics_server.aclose()
        if wkd_runner is not None:
            await wkd_runner.cleanup()
        notifier.close()


def _reload(
    current: Settings, source: str, shared: Shared, contexts: list[SessionContext]
) -> Settings:
    """SIGHUP: read the configuration again and apply what can change without a restart
    (domains, aliases, users' grants, limits, timeouts, network rules, authentication checks,
    DKIM keys) to new and running sessions; certificates are reloaded too. Listeners, the data
    directory and the outbound settings need a restart, which the log says. A configuration
    with errors is refused whole: the running one stays."""
    _reload_tls(shared.tls, True)
    path = Path(source)
    if not path.is_file():
        log.info(logfmt("reload", detail="embedded default: nothing to read again"))
        return current
    from hato.config import ConfigError, load_settings

    try:
        new = load_settings(path, env=os.environ, cwd=Path.cwd()).settings
    except ConfigError as exc:
        for line in exc.lines():
            log.error(logfmt("reload-refused", detail=line))
        return current
    if [(lst.role, str(lst.address)) for lst in new.listeners] != [
        (lst.role, str(lst.address)) for lst in current.listeners
    ] or new.server.data_dir != current.server.data_dir:
        log.warning(logfmt("reload-partial", detail="listeners or data_dir changed: restart"))
    try:
        shared.resolver.current = build_resolver(new, shared.users)
    except (OSError, ValueError) as exc:
        log.error(logfmt("reload-refused", detail=str(exc)))
        return current
    by_listener = {(lst.role, str(lst.address)): lst for lst in new.listeners}
    for ctx in contexts:
        listener = next(
            (
                lst
                for lst in current.listeners
                if f"{lst.role.value}@{lst.address}" == ctx.listener.name
            ),
            None,
        )
        if listener is None:
            continue
        fresh = by_listener.get((listener.role, str(listener.address)), listener)
        for name, value in configured_fields(new, shared, fresh).items():
            setattr(ctx, name, value)
    log.info(logfmt("reloaded", source=source, domains=",".join(d.name for d in new.domains)))
    return new


def _reload_tls(tls: ReloadingContext | None, force: bool) -> None:
    """SIGHUP, or the files changed: new handshakes use the new certificate; sessions already
    on TLS keep theirs, so nothing is dropped."""
    if tls is None:
        return
    try:
        if tls.refresh(force=force):
            log.info(logfmt("tls-reloaded", cert=tls.cert, not_after=tls.not_after().isoformat()))
    except TLSConfigError as exc:
        log.error(logfmt("tls-reload-failed", detail=str(exc), kept="the previous certificate"))


async def _watch_tls(tls: ReloadingContext) -> None:
    while True:
        await asyncio.sleep(TLS_WATCH_SECONDS)
        _reload_tls(tls, False)


async def serve_wkd(
    settings: Settings, data_dir: Path, tls: ReloadingContext | None
) -> web.AppRunner:
    """The Web Key Directory endpoint (issue 6): users' OpenPGP keys for senders' clients."""
    address = settings.wkd.address
    assert address is not None
    if settings.wkd.https and tls is None:
        raise StartupError("wkd.https: needs a certificate: add [tls] cert and key", EX_CONFIG)
    keys = KeyStore.in_data_dir(data_dir)
    runner = web.AppRunner(wkd_app(keys), access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        address.host,
        address.port,
        ssl_context=tls.current if settings.wkd.https and tls is not None else None,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"wkd.address {address}: cannot listen: {exc.strerror}; pick a free port",
            EX_CANTCREAT,
        ) from exc
    log.info(logfmt("listening", role="wkd", address=address, https=settings.wkd.https))
    return runner


def _open_sessions(
    states: list[ListenerState], contexts: list[SessionContext], role: Role
) -> Callable[[], int]:
    """The open sessions of `role`'s listeners, read when /metrics is scraped."""
    pairs = list(zip(states, contexts, strict=True))
    return lambda: sum(state.active for state, ctx in pairs if ctx.role is role)


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
    handler = configure_logging(settings.server.log_format, settings.server.log_level)
    fast = _use_uvloop()
    log.info(logfmt("starting", version=_version(), source=source, uvloop=fast, pid=os.getpid()))
    # 0: one per CPU, at most 64 (a queue id has room for 64 workers' slots, queue/ids.py).
    workers = settings.server.workers or min(os.cpu_count() or 1, 64)
    try:
        with locked(Path(settings.server.data_dir), _owner(settings)):
            if workers > 1:
                from hato.supervisor import supervise

                return supervise(settings, source, workers, handler)
            asyncio.run(run(settings, source))
    except (StartupError, DataDirError) as exc:
        log.error(logfmt("startup-failed", detail=str(exc)))
        handler.flush()
        print(f"hato: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EX_OK
    log.info(logfmt("stopped"))
    handler.flush()
    return EX_OK


def _owner(settings: Settings) -> tuple[int, int] | None:
    if settings.server.user is None or os.geteuid() != 0:
        return None
    try:
        identity = lookup_identity(settings.server.user, settings.server.group)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return identity.uid, identity.gid


def _version() -> str:
    from hato import __version__

    return __version__
