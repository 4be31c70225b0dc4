"""The composition root: reads settings, builds every room, binds the listeners, runs.

Its pieces live in hato.boot (process, build, predrop, reload, runtime); this module wires
them: `run` builds the endpoints and rooms (boot/runtime.py), binds the listeners, runs every
task in one TaskGroup until SIGTERM, then drains.
May import every room. Nothing else imports this module but hato.boot.supervisor, whose `serve`
(`hato serve`) runs `run` in one process or in each worker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.boot.acme import renew_op
from hato.boot.build import build_tls, open_door
from hato.boot.doctorwatch import watch_task
from hato.boot.outbound import build_outbound
from hato.boot.predrop import check_after_drop, preload
from hato.boot.process import EX_CANTCREAT, EX_CONFIG, StartupError, listen_socket
from hato.boot.reload import LiveConfiguration, Reloader, ReloadOutcome, ReloadRequests
from hato.boot.reportwatch import build_sender, report_task, send_op
from hato.boot.runtime import Endpoints, Listening, Rooms, build_rooms, start_endpoints
from hato.boot.tlswatch import watch_tls
from hato.dns import DnsCache, DnsPythonResolver
from hato.intake.finish import Door
from hato.model import SystemClock, logfmt
from hato.policy.admin import PolicyAdmin
from hato.queue.admin import LiveAdmin
from hato.server import adminlog, control, maildrop
from hato.server.auth import ScramDecoy
from hato.server.context import session_ids
from hato.server.datadir import DataDirError, server_secret
from hato.server.localsubmit import LocalSubmitter, SenderPolicy
from hato.server.metrics import refresh_queue
from hato.server.privileges import PrivilegeError, drop_privileges, lookup_identity
from hato.server.spread import LoadBoard, WorkerLoad
from hato.server.systemd import Notifier, run_watchdog, watchdog_interval
from hato.server.workerfigures import FIGURES_DIR, WorkerFigures

if TYPE_CHECKING:
    from hato.config import Settings

__all__ = ["WorkerRole", "run", "server_owner"]  # what hato.boot.supervisor uses

log = logging.getLogger("hato")


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """One process of several (hato.boot.supervisor): its sockets, its name, what it runs."""

    index: int
    sockets: dict[int, socket.socket]  # listener index -> the bound socket it serves
    node_id: str
    board: LoadBoard  # every worker's live connections, which spread them (server/spread.py)
    reloads: ReloadRequests  # how it asks the supervisor for a reload (`hato reload`)


async def run(settings: Settings, source: str, worker: WorkerRole | None = None) -> None:
    """Build, bind, run everything in one TaskGroup until SIGTERM, drain, close."""
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
    endpoints = await start_endpoints(settings, data_dir, tls, clock, first)
    # Issue 13: what needs root or the whole Python installation is done before the drop.
    dns = DnsPythonResolver(
        settings.dns.nameservers, timeout=settings.dns.timeout, cache=DnsCache(clock)
    )
    outbound = build_outbound(settings, dns, clock)  # reads [smarthost] password_file
    unix = _bind_control(settings, data_dir) if first else None
    preload(settings)
    _drop_privileges(settings, data_dir)
    notifier = Notifier.from_env()
    index = worker.index if worker is not None else None
    rooms = await build_rooms(settings, endpoints, clock, dns, outbound, tls, index, node_id)
    listening = Listening()
    runner_task: asyncio.Task[None] | None = None
    try:
        ids = session_ids(clock.now(), worker.index if worker is not None else 0)
        load = WorkerLoad(worker.board, worker.index) if worker is not None else None
        await listening.open(settings, sockets, rooms, scram, ids, load)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        live = LiveConfiguration(settings, source, rooms.shared, outbound, listening.contexts)

        def reload() -> ReloadOutcome:
            notifier.reloading()
            outcome = live.reload()
            notifier.ready("reloaded" if outcome.applied else "reload refused (see the log)")
            return outcome

        reloader = Reloader(reload, ask_parent=worker.reloads.ask if worker is not None else None)
        loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)
        # A SIGHUP that came while this process started (serve() blocks it) is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        domains = ",".join(d.name for d in settings.domains)
        hostname = settings.server.hostname
        log.info(
            logfmt("ready", source=source, data_dir=data_dir, hostname=hostname, domains=domains)
        )
        async with asyncio.TaskGroup() as tasks:
            runner_task = tasks.create_task(rooms.runner.run())
            background = _background(
                tasks, settings, rooms, endpoints, notifier, reloader.request, unix, worker
            )
            # What start-up built lives as long as the process: keep it out of every garbage
            # collection from now on (a full collection otherwise walks all of it again).
            gc.freeze()
            notifier.ready("accepting mail")
            await stop.wait()
            notifier.stopping("draining sessions")
            log.info(logfmt("stopping", detail="draining sessions"))
            await listening.drain()
            for task in (runner_task, *background):
                task.cancel()
    finally:
        listening.close()
        # The runner must stop before the queue closes (it writes outcomes through it).
        if runner_task is not None and not runner_task.done():
            runner_task.cancel()
        await rooms.aclose()
        await endpoints.aclose()
        notifier.close()


def _drop_privileges(settings: Settings, data_dir: Path) -> None:
    try:
        # Ports 25/465/587 are bound; from here on we need no privilege (issue 7).
        identity = drop_privileges(settings.server.user, settings.server.group, data_dir=data_dir)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    if identity is not None and settings.local.aliases_file is not None:
        check_after_drop([("local.aliases_file", settings.local.aliases_file)], identity)


def _background(
    tasks: asyncio.TaskGroup,
    settings: Settings,
    rooms: Rooms,
    endpoints: Endpoints,
    notifier: Notifier,
    reload: Callable[[], Awaitable[dict[str, Any]]],
    unix: tuple[socket.socket, socket.socket | None] | None,
    worker: WorkerRole | None,
) -> list[asyncio.Task[None]]:
    """Every task of the process but the queue runner; the first worker's only in it."""
    shared, queue, outbound = rooms.shared, rooms.queue, rooms.outbound
    clock, dns, metrics, data_dir = shared.clock, shared.dns, shared.metrics, shared.data_dir
    first = worker is None or worker.index == 0
    submitter = LocalSubmitter(
        queue,
        shared.resolver,
        hostname=settings.server.hostname,
        domain=settings.domains[0].name,
        clock=clock,
        max_message_size=settings.limits.max_message_size,
        senders=SenderPolicy(
            shared.resolver,
            settings.domains[0].name,
            server_uid=os.geteuid(),
            grants=settings.local.send_as,
        ),
        limiter=shared.limiter,
        keys=rooms.keys,
    )
    open_door(settings, shared, submitter.context, Door.LOCAL)  # DKIM, rspamd, milters
    sender = build_sender(settings, rooms.reports if first else None, dns, clock, submitter)
    # With workers, each publishes its figures and the first adds them up for /metrics and
    # `hato status` (issue 15: they were the first worker's alone).
    figures = (
        WorkerFigures(data_dir / FIGURES_DIR, worker.index, metrics, rooms.tally.last_hour)
        if worker is not None
        else None
    )
    acme = endpoints.acme
    controller = control.ControlServer(
        queue=queue,
        runner=rooms.runner,
        submit=submitter,
        clock=clock,
        hostname=settings.server.hostname,
        domain=settings.domains[0].name,
        counter=figures if figures is not None else rooms.tally.last_hour,
        max_message_size=settings.limits.max_message_size,
        info=lambda: {
            "listeners": [str(lst.address) for lst in settings.listeners],
            "pid": os.getppid() if worker is not None else os.getpid(),  # the server's
            "problems": [*shared.problems, *outbound.egress_problems()],
            "egress": outbound.egress_problems(),  # delivery/egress.py: OP25B
        },
        reload=reload,
        renew=renew_op(acme),
        committer=rooms.committer,
        reports=send_op(settings, sender, clock),
        policy=PolicyAdmin(shared.throttle, shared.limiter, adminlog.admin_log),
    )
    interval = watchdog_interval()
    work: list[Coroutine[Any, Any, None]] = [
        outbound.run_sweeper(),
        refresh_queue(metrics, LiveAdmin(queue, clock.now, log.info).stats, clock.now),
        report_task(settings, sender, clock),
    ]
    if rooms.heartbeat is not None:
        work.append(rooms.heartbeat.run())  # [store] postgresql: hato status sees this node
    if shared.tls is not None:
        work.append(watch_tls(shared.tls))
    if acme is not None:
        work.append(acme.manager.run())
    if interval:
        work.append(run_watchdog(notifier, interval))
    if figures is not None:
        work.append(figures.publish_every())
        metrics.shown_through(figures)
    if first:
        # hato queue / hato status / hato-sendmail talk to this (root only, mode 0600).
        path, submit_path = data_dir / "control.sock", settings.server.submit_socket
        work.append(control.serve(path, controller, submit_path=submit_path, bound=unix))
        # Mail hato-sendmail left while the server was down, and since (server.maildrop).
        pickup = maildrop.Pickup(
            maildrop.prepare(data_dir),
            submitter,
            settings.domains[0].name,
            settings.limits.max_message_size,
        )
        work.append(pickup.run())
        # One doctor report, not one per worker.
        blocked = outbound.egress.blocked
        work.append(watch_task(settings, dns, clock, submitter, metrics, blocked))
    return [tasks.create_task(coroutine) for coroutine in work]


def _bind_control(settings: Settings, data_dir: Path) -> tuple[socket.socket, socket.socket | None]:
    """The control and submission sockets, bound before the privilege drop (issue 13: a
    submission socket in root's /run/hato was an ExceptionGroup after it)."""
    path = settings.server.submit_socket
    try:
        return control.bind_sockets(data_dir / "control.sock", path, server_owner(settings))
    except OSError as exc:
        where = f"server.submit_socket: {path}" if path else f"server.data_dir: {data_dir}"
        raise StartupError(
            f"{where}: cannot make the socket there: {exc.strerror or exc}; "
            "fix the directory's permissions or choose another path",
            EX_CANTCREAT,
        ) from exc


def server_owner(settings: Settings) -> tuple[int, int] | None:
    if settings.server.user is None or os.geteuid() != 0:
        return None
    try:
        identity = lookup_identity(settings.server.user, settings.server.group)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return identity.uid, identity.gid
