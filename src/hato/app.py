"""The composition root: reads settings, builds every room, binds the listeners, runs.

Its pieces live in hato.boot (process, build, predrop, reload); this module wires them.
May import every room. Nothing else imports this module but hato.supervisor, whose `serve`
(`hato serve`) runs `run` in one process or in each worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hato.boot.acme import renew_op, start_acme
from hato.boot.build import (
    MeasuredCourier,
    build_resolver,
    build_srs,
    build_tls,
    configured_fields,
    http_limits,
    mailbox_owner,
)
from hato.boot.doctorwatch import watch_task
from hato.boot.filters import SpamFilters
from hato.boot.predrop import check_after_drop, preload
from hato.boot.process import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    StartupError,
    bind,
    listen_socket,
)
from hato.boot.reload import LiveConfiguration, Reloader, ReloadOutcome
from hato.boot.reportwatch import build_sender, close_reports, open_reports, report_task, send_op
from hato.boot.shared import CurrentResolver, Shared
from hato.boot.store import (
    open_keys,
    open_limiter,
    open_queue,
    open_store_pool,
    open_throttle,
    open_users,
)
from hato.boot.tlswatch import watch_tls
from hato.boot.web import publications, serve_web
from hato.dbcache import CachedKeys
from hato.delivery.maildir import MaildirCourier
from hato.delivery.router import RoutingCourier
from hato.directory.known import KnownMailboxes
from hato.dns import DnsCache, DnsPythonResolver
from hato.intake.direct import DirectDelivery
from hato.intake.notices import KeyedCommitter
from hato.model import Role, SystemClock, logfmt
from hato.outbound_setup import build_outbound
from hato.policy.connections import CONNECTIONS_DB, ConnectionLedger
from hato.queue import QueueRunner, Schedule
from hato.queue.admin import LiveAdmin
from hato.server import control, maildrop
from hato.server.auth import ScramDecoy
from hato.server.clientsetup import Published
from hato.server.context import ListenerState, SessionContext, session_ids
from hato.server.datadir import DataDirError, server_secret
from hato.server.implicit import ImplicitTlsListener
from hato.server.localsubmit import LocalSubmitter, SenderPolicy
from hato.server.metrics import Metrics, MetricsBindError, bind_metrics, refresh_queue
from hato.server.miltermetrics import MilterCounters
from hato.server.privileges import PrivilegeError, drop_privileges, lookup_identity
from hato.server.session import SmtpSession
from hato.server.systemd import Notifier, run_watchdog, watchdog_interval

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.config.sections import ListenerSettings

__all__ = [  # what hato.supervisor and hato.cli use of the composition root
    "EX_CONFIG",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "StartupError",
    "WorkerRole",
    "build_resolver",
    "build_tls",
    "listen_socket",
    "run",
    "server_owner",
]

log = logging.getLogger("hato")

DRAIN_SECONDS = 30.0


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
            limits = http_limits(settings.metrics)
            metrics_server = await bind_metrics(settings.metrics.address, metrics, limits)
        except MetricsBindError as exc:
            raise StartupError(str(exc), EX_CANTCREAT) from exc
    wkd_runner = None
    published = Published(publications(settings))  # what the web endpoint serves (issue 18)
    if settings.wkd.address is not None and first:
        wkd_runner = await serve_web(settings, data_dir, tls, published)
    acme = await start_acme(settings, data_dir, tls, clock) if first else None  # port 80
    # Issue 13: what needs root or the whole Python installation is done before the drop.
    dns = DnsPythonResolver(
        settings.dns.nameservers, timeout=settings.dns.timeout, cache=DnsCache(clock)
    )
    outbound = build_outbound(settings, dns, clock)  # reads [smarthost] password_file
    unix = _bind_control(settings, data_dir) if first else None
    preload()
    try:
        # Ports 25/465/587 are bound; from here on we need no privilege (issue 7).
        identity = drop_privileges(settings.server.user, settings.server.group, data_dir=data_dir)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    if identity is not None and settings.local.aliases_file is not None:
        check_after_drop([("local.aliases_file", settings.local.aliases_file)], identity)
    notifier = Notifier.from_env()
    queue = await open_queue(  # SQLite in DATA_DIR/queue, or [store] postgresql
        settings, data_dir, clock, node_id, worker.index if worker is not None else None
    )
    for problem in queue.problems:
        log.error(logfmt("queue-problem", detail=problem))
    pool = open_store_pool(settings, node_id)  # [store] postgresql: the shared state
    users = open_users(settings, data_dir, pool)
    srs = build_srs(settings, clock)  # after the privilege drop: the key file is the server's
    shared = Shared(
        clock=clock,
        data_dir=data_dir,
        queue=queue,
        dns=dns,
        users=users,
        keys=open_keys(data_dir, pool),  # users' public keys (issue 6)
        tls=tls,
        throttle=open_throttle(settings, clock, pool),  # AUTH failures and blocks
        limiter=open_limiter(settings, clock, data_dir, pool),
        verify_slots=asyncio.Semaphore(2),  # argon2id checks at once (~64 MiB, ~150 ms each)
        resolver=CurrentResolver(build_resolver(settings, users, srs)),
        srs=srs,
        filters=SpamFilters(metrics, MilterCounters(metrics.registry)),
        metrics=metrics,
        published=published,
        reports=(reports := open_reports(settings, data_dir, clock, outbound)),
    )
    resolver = shared.resolver
    stamp = shared.keys.cache_stamp  # None: the shared PostgreSQL store, not cached
    keys = CachedKeys(shared.keys, stamp) if stamp is not None else shared.keys
    maildir = MaildirCourier(
        settings.mailboxes,
        settings.server.hostname,
        clock=clock,
        owner=mailbox_owner(settings),
    )
    counter = control.OutcomeCounter()
    local = KnownMailboxes(maildir, resolver)  # an alias target without an account bounces
    routing = RoutingCourier(
        resolver.is_local_domain,
        local,
        outbound,
        hop_limit=settings.limits.hopcount_limit,
        srs=srs,
    )
    courier = control.CountingCourier(
        MeasuredCourier(routing, metrics, clock, resolver.is_local_domain), counter
    )
    # One way in (issue 11): DSNs to a keyed user are encrypted as SMTP mail is (server/protect).
    committer = KeyedCommitter(queue, keys, clock, resolver, hostname=settings.server.hostname)
    runner = QueueRunner(
        queue,
        courier,
        clock=clock,
        schedule=Schedule(),
        hostname=settings.server.hostname,
        committer=committer,
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
    contexts: list[tuple[SessionContext, ListenerSettings]] = []
    servers: list[asyncio.Server | ImplicitTlsListener] = []
    ids = session_ids(clock.now(), worker.index if worker is not None else 0)
    # With workers, the mx limits count every worker's connections (policy/connections.py).
    ledger = ConnectionLedger(data_dir / CONNECTIONS_DB, worker.index) if worker else None
    try:
        for number, listener in enumerate(settings.listeners):
            if number not in sockets:
                continue  # another worker serves it (submission stays in the first)
            role = listener.role
            state = ListenerState(
                name=f"{role.value}@{listener.address}",
                max_connections=listener.max_connections,
                max_per_ip=listener.max_connections_per_ip,
                shared=ledger if role is Role.MX else None,
            )
            ctx = SessionContext(
                role=role,
                queue=queue,
                resolver=resolver,
                clock=clock,
                listener=state,
                tls=tls,
                implicit_tls=role is Role.SUBMISSIONS,
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
                ids=ids,
                **configured_fields(settings, shared, listener, shared.problems),
            )
            if role is Role.SUBMISSIONS:  # port 465: limits hold from accept, through TLS
                front = ImplicitTlsListener(sockets[number], ctx, _factory(ctx))
                front.start()
                servers.append(front)
            else:
                servers.append(
                    await bind(loop, listener.host, listener.port, _factory(ctx), sockets[number])
                )
            states.append(state)
            contexts.append((ctx, listener))
            log.info(logfmt("listening", role=role.value, address=listener.address))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        live = LiveConfiguration(settings, source, shared, outbound, contexts)

        def reload() -> ReloadOutcome:
            notifier.reloading()
            outcome = live.reload()
            notifier.ready("reloaded" if outcome.applied else "reload refused (see the log)")
            return outcome

        reloader = Reloader(reload, via_parent=worker is not None)
        loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)
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
            watcher = tasks.create_task(watch_tls(tls)) if tls is not None else None
            renewer = tasks.create_task(acme.manager.run() if acme else asyncio.Event().wait())
            sweeper = tasks.create_task(outbound.run_sweeper())
            submitter = LocalSubmitter(
                queue,
                resolver,
                hostname=settings.server.hostname,
                domain=settings.domains[0].name,
                clock=clock,
                max_message_size=settings.limits.max_message_size,
                senders=SenderPolicy(
                    resolver,
                    [d.name for d in settings.domains],
                    server_uid=os.geteuid(),
                    grants=settings.local.send_as,
                ),
                limiter=shared.limiter,
                keys=keys,
            )
            sender = build_sender(settings, reports if first else None, dns, clock, submitter)
            controller = control.ControlServer(
                queue=queue,
                runner=runner,
                submit=submitter,
                clock=clock,
                hostname=settings.server.hostname,
                domain=settings.domains[0].name,
                counter=counter,
                max_message_size=settings.limits.max_message_size,
                info=lambda: {
                    "listeners": [str(lst.address) for lst in settings.listeners],
                    "pid": os.getppid() if worker is not None else os.getpid(),  # the server's
                    "problems": [*shared.problems, *outbound.egress_problems()],
                    "egress": outbound.egress_problems(),  # delivery/egress.py: OP25B
                },
                reload=reloader.request,
                renew=renew_op(acme),
                committer=committer,
                reports=send_op(settings, sender, clock),
            )
            # hato queue / hato status / hato-sendmail talk to this (root only, mode 0600).
            control_task = tasks.create_task(
                control.serve(
                    data_dir / "control.sock",
                    controller,
                    submit_path=settings.server.submit_socket,
                    bound=unix,
                )
                if first
                else asyncio.Event().wait()
            )
            # Mail hato-sendmail left while the server was down, and since (server.maildrop).
            pickup = tasks.create_task(
                maildrop.Pickup(
                    maildrop.prepare(data_dir),
                    submitter,
                    settings.domains[0].name,
                    settings.limits.max_message_size,
                ).run()
                if first
                else asyncio.Event().wait()
            )
            for role in {lst.role for lst in settings.listeners}:
                metrics.open_sessions(role, _open_sessions(states, [c for c, _ in contexts], role))
            gauges = tasks.create_task(
                refresh_queue(metrics, LiveAdmin(queue, clock.now, log.info).stats, clock.now)
            )
            blocked = outbound.egress.blocked
            doctor_task = tasks.create_task(  # the first worker only: one report, not N
                watch_task(settings, dns, clock, submitter, metrics, blocked)
                if first
                else asyncio.Event().wait()
            )
            reports_task = tasks.create_task(report_task(settings, sender, clock))
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
            renewer.cancel()
            control_task.cancel()
            pickup.cancel()
            gauges.cancel()
            doctor_task.cancel()
            reports_task.cancel()
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
        if ledger is not None:
            ledger.close()
        close_reports(reports)
        await shared.filters.aclose()
        if metrics_server is not None:
            await metrics_server.aclose()
        if wkd_runner is not None:
            await wkd_runner.aclose()
        if acme is not None:
            await acme.aclose()
        notifier.close()


def _open_sessions(
    states: list[ListenerState], contexts: list[SessionContext], role: Role
) -> Callable[[], int]:
    """The open sessions of `role`'s listeners, read when /metrics is scraped."""
    pairs = list(zip(states, contexts, strict=True))
    return lambda: sum(state.active for state, ctx in pairs if ctx.role is role)


def _factory(ctx: SessionContext) -> Callable[[], SmtpSession]:
    return lambda: SmtpSession(ctx)


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


def server_owner(settings: Settings) -> tuple[int, int] | None:
    if settings.server.user is None or os.geteuid() != 0:
        return None
    try:
        identity = lookup_identity(settings.server.user, settings.server.group)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return identity.uid, identity.gid
