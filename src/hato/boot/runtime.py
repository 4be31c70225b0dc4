"""The pieces of one server process that `hato.boot.app.run` puts together (part of the
composition root): the endpoints the first worker serves beside mail, the rooms built after
the privilege drop, and the listeners with the state their sessions share. `run` builds them
in this order (build, bind, one TaskGroup, drain) and each is closed by its own `aclose`, in
reverse.

May import every room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hato.boot.acme import Acme, start_acme
from hato.boot.build import (
    build_resolver,
    build_srs,
    http_limits,
    listener_config,
    mailbox_owner,
    open_door,
)
from hato.boot.dbcache import CachedKeys
from hato.boot.filters import SpamFilters
from hato.boot.heartbeat import Heartbeat
from hato.boot.process import EX_CANTCREAT, StartupError, bind
from hato.boot.reportwatch import close_reports, open_reports
from hato.boot.shared import CurrentResolver, Shared
from hato.boot.stampwatch import process_watch
from hato.boot.store import (
    directory_cache,
    kept_keys,
    open_keys,
    open_limiter,
    open_queue,
    open_store_pool,
    open_throttle,
    open_users,
)
from hato.boot.web import LateKeys, publications, serve_web
from hato.crypto import KeyLookup
from hato.delivery.maildir import MaildirCourier
from hato.delivery.outbound import OutboundCourier
from hato.delivery.router import MailboxRoutes, RoutingCourier
from hato.directory.known import KnownMailboxes
from hato.dns import DnsPythonResolver
from hato.intake.direct import DirectDelivery
from hato.intake.finish import Door
from hato.intake.notices import KeyedCommitter
from hato.intake.rekey import KeyedDelivery
from hato.model import Role, SystemClock, logfmt
from hato.policy.authlimit_sqlite import AUTHLIMIT_DB
from hato.policy.connections import CONNECTIONS_TABLE, ConnectionLedger
from hato.queue import QueueRunner, QueueStore, Schedule
from hato.reports import SqliteReportStore
from hato.server.auth import ScramDecoy, VerifySlots
from hato.server.clientsetup import Published
from hato.server.context import ListenerState, SessionContext
from hato.server.deliverycount import DeliveryTally, OutcomeCounter
from hato.server.httpguard import GuardedSite
from hato.server.implicit import ImplicitTlsListener
from hato.server.metrics import Metrics, MetricsBindError, MetricsServer, bind_metrics
from hato.server.session import SmtpSession
from hato.server.spread import AcceptLoop, PlainAccepts, Turn, WorkerLoad
from hato.server.tls import ReloadingContext

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hato.config import Settings
    from hato.config.sections import ListenerSettings

log = logging.getLogger("hato")

DRAIN_SECONDS = 30.0


@dataclass(slots=True)
class Endpoints:
    """What the first worker serves beside mail: metrics, the web endpoint, ACME's port 80."""

    metrics: Metrics
    published: Published  # what the web endpoint serves (issue 18); a reload swaps it
    wkd_keys: LateKeys = field(default_factory=LateKeys)  # the keys WKD serves
    metrics_server: MetricsServer | None = None
    web: GuardedSite | None = None
    acme: Acme | None = None

    async def aclose(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.aclose()
        if self.web is not None:
            await self.web.aclose()
        if self.acme is not None:
            await self.acme.aclose()


async def start_endpoints(
    settings: Settings,
    data_dir: Path,
    tls: ReloadingContext | None,
    clock: SystemClock,
    first: bool,
) -> Endpoints:
    """Bound before the privilege drop (ports below 1024); only in the first worker."""
    endpoints = Endpoints(Metrics(), Published(publications(settings)))
    if not first:
        return endpoints
    if settings.metrics.address is not None:
        try:
            limits = http_limits(settings.metrics)
            endpoints.metrics_server = await bind_metrics(
                settings.metrics.address, endpoints.metrics, limits
            )
        except MetricsBindError as exc:
            raise StartupError(str(exc), EX_CANTCREAT) from exc
    if settings.wkd.address is not None:
        endpoints.web = await serve_web(
            settings, data_dir, tls, endpoints.published, endpoints.wkd_keys
        )
    endpoints.acme = await start_acme(settings, data_dir, tls, clock)  # port 80
    return endpoints


@dataclass(slots=True)
class Rooms:
    """The rooms of one process, built after the privilege drop."""

    shared: Shared
    queue: QueueStore
    keys: KeyLookup  # users' keys, asked at every RCPT (cached: dbcache.py, model/notified.py)
    maildir: MaildirCourier
    tally: DeliveryTally  # what deliveries gave: /metrics and `hato status`
    committer: KeyedCommitter
    runner: QueueRunner
    direct: DirectDelivery | None
    outbound: OutboundCourier
    ledger: ConnectionLedger | None  # with workers: the connection limits of all
    reports: SqliteReportStore | None  # [reports] enabled: what they count (boot/reportwatch)
    heartbeat: Heartbeat | None = None  # [store] postgresql, the first worker: hato status
    # [store] postgresql: the SMTP RCPT's keys, "no key" kept too (checked at the commit)
    rcpt_keys: KeyLookup | None = None

    async def aclose(self) -> None:
        """After the runner stopped (it writes outcomes through the queue)."""
        if self.heartbeat is not None:
            await asyncio.to_thread(self.heartbeat.stop)
        await self.queue.close()
        await self.outbound.aclose()
        self.maildir.close()
        self.shared.users.close()
        self.shared.keys.close()
        self.shared.limiter.close()
        self.shared.throttle.close()
        if self.ledger is not None:
            self.ledger.close()
        close_reports(self.reports)
        await self.shared.filters.aclose()


async def build_rooms(
    settings: Settings,
    endpoints: Endpoints,
    clock: SystemClock,
    dns: DnsPythonResolver,
    outbound: OutboundCourier,
    tls: ReloadingContext | None,
    worker: int | None,  # the worker's index, with workers
    node_id: str,
) -> Rooms:
    data_dir = Path(settings.server.data_dir)
    metrics = endpoints.metrics
    queue = await open_queue(settings, data_dir, clock, node_id, worker)  # SQLite or PostgreSQL
    for problem in queue.problems:
        log.error(logfmt("queue-problem", detail=problem))
    pool = open_store_pool(settings, node_id)  # [store] postgresql: the shared state
    # [store] postgresql: account and key answers kept until a node changes them (issue 16)
    cache = directory_cache(queue) if pool is not None else None
    users = open_users(settings, data_dir, pool, cache)
    srs = build_srs(settings, clock)  # after the privilege drop: the key file is the server's
    # With workers, every one serves submission: AUTH failures count in one file (issue 15).
    auth_file = data_dir / AUTHLIMIT_DB if worker is not None else None
    shared = Shared(
        clock=clock,
        data_dir=data_dir,
        queue=queue,
        dns=dns,
        users=users,
        keys=open_keys(data_dir, pool, cache),  # users' public keys (issue 6)
        tls=tls,
        throttle=open_throttle(settings, clock, pool, auth_file),  # AUTH failures and blocks
        limiter=open_limiter(settings, clock, data_dir, pool),
        verify_slots=VerifySlots(2),  # argon2id checks at once (~64 MiB, ~150 ms each)
        resolver=CurrentResolver(build_resolver(settings, users, srs)),
        srs=srs,
        filters=SpamFilters(metrics, metrics.milters),
        metrics=metrics,
        published=endpoints.published,
        reports=(reports := open_reports(settings, data_dir, clock, outbound, pool)),
    )
    if pool is not None:
        endpoints.wkd_keys.use(shared.keys)  # WKD serves the shared store's keys
    resolver = shared.resolver
    stamp = shared.keys.cache_stamp  # None: the shared PostgreSQL store (its own cache)
    keys = CachedKeys(shared.keys, stamp, process_watch()) if stamp is not None else shared.keys
    maildir = MaildirCourier(
        settings.mailboxes, settings.server.hostname, clock=clock, owner=mailbox_owner(settings)
    )
    tally = DeliveryTally(metrics, OutcomeCounter(), clock, resolver.is_local_domain)
    # A [[domain]] with a [[transport]] lmtp has its mailboxes behind that LMTP server
    # (Dovecot): local all the same (accounts, aliases, keys), handed over by the courier.
    # Asked at each delivery (a lambda, not the bound method: built without a courier, as
    # tests/unit/server/test_session_stamps.py does, it is never asked).
    mailboxes = MailboxRoutes(maildir, outbound, lambda domain: outbound.behind_lmtp(domain))
    local = KnownMailboxes(mailboxes, resolver)  # an alias target without an account bounces
    routing = RoutingCourier(
        resolver.is_local_domain,
        # A queued plaintext copy for a mailbox that has a key by now is encrypted first.
        KeyedDelivery(local, keys, queue, clock, in_thread=stamp is None),
        outbound,
        hop_limit=settings.limits.hopcount_limit,
        srs=srs,
    )
    courier = tally.courier(routing)
    # One way in (issue 11): DSNs to a keyed user are encrypted as SMTP mail is (intake/).
    committer = KeyedCommitter(queue, keys, clock, resolver, hostname=settings.server.hostname)
    open_door(settings, shared, committer.context, Door.NOTICE)  # DSNs DKIM-signed
    runner = QueueRunner(
        queue,
        courier,
        clock=clock,
        attempt_timeout=attempt_bound(queue.lease_seconds, settings.delivery.attempt_timeout),
        # Another node's lease that ran out (it died) is seen by the next scan: at the latest
        # a quarter of the lease time after it ran out (and every minute).
        max_sleep=min(60.0, queue.lease_seconds / 4),
        # [queue] delay_warning_time: 0 turns the delay warnings off (RFC 3461 §4.1 NOTIFY=DELAY).
        schedule=Schedule(delay_warning=float(settings.queue.delay_warning_time) or None),
        hostname=settings.server.hostname,
        committer=committer,
    )
    direct = (
        DirectDelivery(
            tally.courier(local),
            # Into a Maildir only: LMTP mailboxes are delivered from the queue.
            lambda domain: resolver.is_local_domain(domain) and not outbound.behind_lmtp(domain),
            clock,
        )
        if settings.queue.direct_local_delivery
        else None
    )
    # With workers, the limits count every worker's connections (policy/connections.py).
    ledger = ConnectionLedger(data_dir / CONNECTIONS_TABLE, worker) if worker is not None else None
    heartbeat = (
        Heartbeat.of(settings, pool, metrics, supervised=worker is not None)
        if pool is not None and not worker
        else None
    )
    return Rooms(
        shared, queue, keys, maildir, tally, committer, runner, direct, outbound, ledger,
        reports, heartbeat, kept_keys(shared.keys, cache),
    )  # fmt: skip


def attempt_bound(lease: float, delivery_timeout: float) -> float:
    """The runner's bound on one attempt: 10 minutes, less when the lease is short ([store]
    lease_time, which config keeps above delivery.attempt_timeout): between the two, so an
    attempt ends, and is recorded, before its lease runs out."""
    return min(600.0, (lease + delivery_timeout) / 2)


@dataclass(slots=True)
class Listening:
    """The listeners this process serves, with their accounting; filled as each is bound, so
    that `close` stops whatever was bound when a later one failed."""

    states: list[ListenerState] = field(default_factory=list)
    contexts: list[tuple[SessionContext, ListenerSettings]] = field(default_factory=list)
    servers: list[asyncio.Server | ImplicitTlsListener | AcceptLoop] = field(default_factory=list)

    async def open(
        self,
        settings: Settings,
        sockets: dict[int, socket.socket],
        rooms: Rooms,
        scram: ScramDecoy,
        ids: Iterator[str],
        load: WorkerLoad | None = None,
    ) -> None:
        """With `load` (several workers), every listener accepts by its own loop and takes
        turns with the other workers (server/spread.py); alone, the plain listeners are the
        event loop's servers."""
        loop = asyncio.get_running_loop()
        shared = rooms.shared
        for number, listener in enumerate(settings.listeners):
            if number not in sockets:
                continue  # not given to this worker
            role = listener.role
            state = ListenerState(
                name=f"{role.value}@{listener.address}",
                max_connections=listener.max_connections,
                max_per_ip=listener.max_connections_per_ip,
                shared=rooms.ledger,  # with workers: every listener's counts are shared
                load=load,
            )
            config = listener_config(settings, shared, listener, shared.problems)
            ctx = SessionContext(
                role=role,
                settings=config.settings,
                idle_timeout=config.idle_timeout,
                session_timeout=config.session_timeout,
                queue=rooms.queue,
                resolver=shared.resolver,
                clock=shared.clock,
                listener=state,
                tls=shared.tls,
                implicit_tls=role is Role.SUBMISSIONS,
                accounts=shared.users if role is not Role.MX else None,
                verify_slots=shared.verify_slots,
                scram=scram,
                # An AUTH block never extends to port 25: mail to the client's owner still
                # arrives while its submission is blocked (and mx offers no AUTH to block).
                throttle=shared.throttle if role is not Role.MX else None,
                limiter=shared.limiter,
                dns=shared.dns,
                keys=rooms.keys,
                rcpt_keys=rooms.rcpt_keys,  # "no key" kept: checked again at the commit
                metrics=shared.metrics.role(role),
                direct=rooms.direct,
                ids=ids,
                loop=loop,
            )
            ctx.configure(config)  # the rest of what the configuration decides
            turn = Turn(load, time.monotonic) if load is not None else None
            if role is Role.SUBMISSIONS:  # port 465: limits hold from accept, through TLS
                front = ImplicitTlsListener(sockets[number], ctx, _factory(ctx), turn)
                front.start()
                self.servers.append(front)
            elif load is not None and turn is not None:
                accepts = PlainAccepts(_factory(ctx), load)
                plain = AcceptLoop(sockets[number], state.name, accepts, turn)
                plain.start()
                self.servers.append(plain)
            else:
                self.servers.append(
                    await bind(loop, listener.host, listener.port, _factory(ctx), sockets[number])
                )
            self.states.append(state)
            self.contexts.append((ctx, listener))
            log.info(logfmt("listening", role=role.value, address=listener.address))
        for role in {lst.role for lst in settings.listeners}:
            shared.metrics.open_sessions(role, self._open_sessions(role))

    def _open_sessions(self, role: Role) -> Callable[[], int]:
        pairs = list(zip(self.states, [c for c, _ in self.contexts], strict=True))
        return lambda: sum(state.active for state, ctx in pairs if ctx.role is role)

    def close(self) -> None:
        """Stop accepting (sessions in progress go on)."""
        for server in self.servers:
            server.close()

    async def drain(self) -> None:
        """SIGTERM: stop accepting, let transactions in progress finish, then close."""
        self.close()
        for state in self.states:
            for session in list(state.sessions):
                session.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                for state in self.states:
                    await state.empty.wait()
        for state in self.states:
            for session in list(state.sessions):
                if session.transport is not None:
                    session.transport.abort()


def _factory(ctx: SessionContext) -> Callable[[], SmtpSession]:
    return lambda: SmtpSession(ctx)
