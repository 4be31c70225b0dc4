"""Prometheus metrics: what the sessions, the queue runner and the queue say, served over HTTP.

Theory of operation. One `Metrics` object owns its own `CollectorRegistry` (never the global
one: tests build as many as they like, and nothing another library registers leaks into our
endpoint). Everything a label can take on the hot path is bound once, up front: a session gets
a `RoleMetrics` for its listener's role whose methods are one attribute load and one `inc()`;
dynamic label values (a TLS version, an AUTH mechanism nobody configured) are bound on first
use and cached. Gauges that describe state somebody else owns are read when scraped
(`open_sessions`) or refreshed by a periodic task (`refresh_queue`), so they cannot drift.

`metrics_app(metrics)` is the aiohttp application serving ``GET /metrics`` in the Prometheus
text format; `serve_metrics(address, metrics)` binds it and runs until cancelled, and
`bind_metrics` does the binding alone (for a composition root that binds everything before it
says READY and drops privileges).

May import model (QueueStats), server.httpguard and intake.miltermetrics (what the milter
checks count); never config.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, assert_never

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from hato.intake.miltermetrics import ACTIONS, Stage, cause
from hato.milter import MilterUnavailable
from hato.milter.protocol import Modification
from hato.model import (
    Delivered,
    Outcome,
    PermFailed,
    Role,
    TempFailed,
    logfmt,
)
from hato.model.queuestore import QueueError, QueueStats
from hato.server.httpguard import GuardedSite, HttpLimits, serve_guarded

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("hato.metrics")
T = TypeVar("T")

QUEUE_REFRESH_SECONDS = 15.0
# Seconds from arrival to delivery: local delivery takes milliseconds, a deferred remote one
# hours or days (the queue gives up after 5 days).
LATENCY_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 4 * 3600.0, 86_400.0, 5 * 86_400.0,
)  # fmt: skip
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
RSPAMD_ACTIONS = (
    "no action", "greylist", "add header", "rewrite subject", "soft reject", "reject",
)  # fmt: skip
SCREEN_REASONS = ("connection-rate", "dnsbl", "early-talker", "greylisted")
RSPAMD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A milter's answer at the end of the message may wait for a virus scan: up to minutes.
MILTER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0)


class Transport(enum.Enum):
    LOCAL = "local"  # into a mailbox (Maildir, LMTP)
    REMOTE = "remote"  # to another server (MX or smarthost)


class Received(enum.Enum):
    """What a client was told at the end of a message (DATA/BDAT LAST)."""

    ACCEPTED = "accepted"  # 2xx
    TEMPFAIL = "tempfail"  # 4xx
    REFUSED = "refused"  # 5xx


class DeliveryResult(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class MetricsBindError(Exception):
    """The metrics endpoint cannot listen; the message names the address and the fix."""


class HostPort(Protocol):
    """Where to listen (config's ListenAddress has this shape)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class _Children(Generic[T]):
    """Label children bound once; a value first seen later is bound then and cached."""

    __slots__ = ("_bind", "_bound")

    def __init__(self, bind: Callable[[str], T], known: Iterable[str]) -> None:
        self._bind = bind
        self._bound = {value: bind(value) for value in known}

    def __getitem__(self, value: str) -> T:
        child = self._bound.get(value)
        if child is None:
            child = self._bound[value] = self._bind(value)
        return child


class TransportDeliveries:
    """The delivery counters of one transport, pre-bound: what the delivery tally calls for
    each recipient (no label lookup by a key of enums per recipient)."""

    __slots__ = ("_bounced", "_deferred", "_delivered", "_latency")

    def __init__(self, metrics: Metrics, transport: Transport) -> None:
        t = transport.value
        self._delivered = metrics.deliveries.labels(DeliveryResult.DELIVERED.value, t)
        self._deferred = metrics.deliveries.labels(DeliveryResult.DEFERRED.value, t)
        self._bounced = metrics.deliveries.labels(DeliveryResult.BOUNCED.value, t)
        self._latency = metrics.delivery_latency.labels(t)

    def count(self, outcome: Outcome, latency: float | None) -> None:
        """One recipient's attempt; `latency` (seconds since arrival) is observed when the
        outcome is Delivered."""
        match outcome:
            case Delivered():
                self._delivered.inc()
                if latency is not None:
                    self._latency.observe(latency if latency > 0.0 else 0.0)
            case TempFailed():
                self._deferred.inc()
            case PermFailed():
                self._bounced.inc()
            case _:
                assert_never(outcome)


class RoleMetrics:
    """The counters of one listener role, pre-bound: what a session calls."""

    __slots__ = ("_auth", "_connections", "_received", "_tls")

    def __init__(self, metrics: Metrics, role: Role) -> None:
        r = role.value
        self._connections = metrics.connections.labels(r)
        self._received = {
            result: metrics.messages_received.labels(r, result.value) for result in Received
        }
        self._tls = _Children(lambda v: metrics.tls_handshakes.labels(r, v), TLS_VERSIONS)
        self._auth = metrics.auth_mechanisms

    def connection(self) -> None:
        """A client connected (counted before the connection limits are applied)."""
        self._connections.inc()

    def message(self, code: int) -> None:
        """The reply `code` we gave at the end of a message (RFC 5321 §4.2.1: its first
        digit says success, temporary or permanent failure)."""
        if code < 400:
            self._received[Received.ACCEPTED].inc()
        elif code < 500:
            self._received[Received.TEMPFAIL].inc()
        else:
            self._received[Received.REFUSED].inc()

    def tls_handshake(self, version: str | None) -> None:
        """A finished TLS handshake; `version` is `ssl.SSLObject.version()`."""
        self._tls[version or "unknown"].inc()

    def auth_failed(self, mechanism: str | None) -> None:
        """An AUTH exchange that ended in failure (RFC 4954 §6: 535 or 454)."""
        self._auth[(mechanism or "unknown").upper()].inc()


class MilterCounters:
    """The Prometheus side of `hato.intake.miltermetrics.MilterMetrics`, on the milter
    families of `Metrics` (`Metrics.milters`)."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def answered(self, milter: str, stage: Stage, reply: str, seconds: float) -> None:
        self._metrics.milter_calls.labels(milter, stage.value, reply).inc()
        self._metrics.milter_seconds.labels(milter, stage.value).observe(seconds)

    def changed(self, milter: str, changes: tuple[Modification, ...]) -> None:
        for change in changes:
            self._metrics.milter_actions.labels(milter, ACTIONS[type(change)]).inc()

    def unavailable(
        self, milter: str, stage: Stage, error: MilterUnavailable, action: str, seconds: float
    ) -> None:
        self._metrics.milter_failures.labels(milter, stage.value, cause(error), action).inc()
        self._metrics.milter_seconds.labels(milter, stage.value).observe(seconds)


class Metrics:
    """All of Hato's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._view: Collector = reg
        self.connections = Counter(
            "hato_connections", "SMTP connections accepted by role", ["role"], registry=reg
        )
        self.sessions_open = Gauge(
            "hato_sessions_open", "SMTP sessions open now, by role", ["role"], registry=reg
        )
        self.messages_received = Counter(
            "hato_messages_received",
            "Messages at end of data, by role and result (accepted, tempfail, refused)",
            ["role", "result"],
            registry=reg,
        )
        self.deliveries = Counter(
            "hato_deliveries",
            "Recipient delivery attempts by result (delivered, deferred, bounced) and transport",
            ["result", "transport"],
            registry=reg,
        )
        self.delivery_latency = Histogram(
            "hato_delivery_latency_seconds",
            "Seconds from arrival to delivery, per delivered recipient",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.tls_handshakes = Counter(
            "hato_tls_handshakes",
            "TLS handshakes by role and version",
            ["role", "version"],
            registry=reg,
        )
        self.auth_failures = Counter(
            "hato_auth_failures",
            "Failed SMTP AUTH exchanges by mechanism",
            ["mechanism"],
            registry=reg,
        )
        self.queue_messages = Gauge("hato_queue_messages", "Messages in the queue", registry=reg)
        self.queue_bytes = Gauge("hato_queue_bytes", "Octets of the queued messages", registry=reg)
        self.queue_recipients = Gauge(
            "hato_queue_recipients",
            "Recipients still to deliver: waiting (never tried), deferred, held",
            ["state"],
            registry=reg,
        )
        self.queue_oldest_age = Gauge(
            "hato_queue_oldest_age_seconds",
            "Age of the oldest queued message (0 when the queue is empty)",
            registry=reg,
        )
        self.queue_refresh_failures = Counter(
            "hato_queue_refresh_failures", "Queue figures that could not be read", registry=reg
        )
        self.rspamd_verdicts = Counter(
            "hato_rspamd_verdicts",
            "Messages rspamd judged, by its action (no action, add header, reject, ...)",
            ["action"],
            registry=reg,
        )
        self.rspamd_seconds = Histogram(
            "hato_rspamd_check_seconds",
            "Seconds one rspamd check took (sending the message included)",
            buckets=RSPAMD_BUCKETS,
            registry=reg,
        )
        self.rspamd_failures = Counter(
            "hato_rspamd_unavailable",
            "Messages rspamd did not judge (down, timeout, bad reply), by the policy applied",
            ["policy"],
            registry=reg,
        )
        self.milter_calls = Counter(
            "hato_milter_calls",
            "Milter conversations that got an answer, by milter, stage and final reply",
            ["milter", "stage", "reply"],
            registry=reg,
        )
        self.milter_actions = Counter(
            "hato_milter_actions",
            "Modifications milters asked for at the end of the message, by milter and action",
            ["milter", "action"],
            registry=reg,
        )
        self.milter_failures = Counter(
            "hato_milter_unavailable",
            "Milter conversations that failed (timeout, error), by the action then taken",
            ["milter", "stage", "cause", "action"],
            registry=reg,
        )
        self.milter_seconds = Histogram(
            "hato_milter_seconds",
            "Seconds one milter conversation took, by milter and stage",
            ["milter", "stage"],
            buckets=MILTER_BUCKETS,
            registry=reg,
        )
        self.milters = MilterCounters(self)  # what the milter checks count through
        self.screen_refusals = Counter(
            "hato_screen_refusals",
            "mx clients the [screen] refused or deferred, by reason (dnsbl, early-talker, "
            "connection-rate, greylisted)",
            ["reason"],
            registry=reg,
        )
        self.egress_blocked = Gauge(
            "hato_egress_blocked",
            "1 while outbound port 25 appears blocked on this network (OP25B), else 0",
            registry=reg,
        )
        self.store_up = Gauge(
            "hato_store_up",
            "[store] postgresql: 1 while this node's heartbeat reaches the database, else 0",
            registry=reg,
        )
        self.doctor_problems = Gauge(
            "hato_doctor_problems",
            "Problems the last periodic doctor run found ([doctor] interval)",
            registry=reg,
        )
        self._screen = _Children(self.screen_refusals.labels, SCREEN_REASONS)
        self._rspamd_actions = _Children(self.rspamd_verdicts.labels, RSPAMD_ACTIONS)
        self._rspamd_policies = _Children(self.rspamd_failures.labels, ("tempfail", "accept"))
        self.auth_mechanisms = _Children(self.auth_failures.labels, AUTH_MECHANISMS)
        self._roles = {role: RoleMetrics(self, role) for role in Role}
        self._by_transport = {t: TransportDeliveries(self, t) for t in Transport}
        self._waiting = self.queue_recipients.labels("waiting")
        self._deferred = self.queue_recipients.labels("deferred")
        self._held = self.queue_recipients.labels("held")

    def role(self, role: Role) -> RoleMetrics:
        """The pre-bound counters a session of a listener with this role calls."""
        return self._roles[role]

    def rspamd_verdict(self, action: str, seconds: float) -> None:
        """Rspamd answered `action` after `seconds` (hato.intake.spamcheck)."""
        self._rspamd_actions[action].inc()
        self.rspamd_seconds.observe(seconds)

    def screen_refused(self, reason: str) -> None:
        """The [screen] refused a client (or deferred a triplet) for `reason`."""
        self._screen[reason].inc()

    def rspamd_unavailable(self, policy: str) -> None:
        """Rspamd gave no verdict; `policy` ("tempfail" or "accept") was applied."""
        self._rspamd_policies[policy].inc()

    def egress(self, blocked: Callable[[], bool]) -> None:
        """hato_egress_blocked reads `blocked()` at each scrape (delivery/egress.py)."""
        self.egress_blocked.set_function(lambda: float(blocked()))

    def open_sessions(self, role: Role, count: Callable[[], int]) -> None:
        """The open-sessions gauge of `role` reads `count()` at each scrape (e.g. the sum of
        `ListenerState.active` over the listeners of that role)."""
        self.sessions_open.labels(role.value).set_function(lambda: float(count()))

    def delivery(self, outcome: Outcome, transport: Transport, latency: float | None) -> None:
        """One recipient's attempt; `latency` (seconds since arrival) is observed when
        the outcome is Delivered."""
        self._by_transport[transport].count(outcome, latency)

    def deliveries_of(self, transport: Transport) -> TransportDeliveries:
        """The pre-bound delivery counters of `transport`."""
        return self._by_transport[transport]

    def queue(self, stats: QueueStats, now: float) -> None:
        """Set the queue gauges from one reading of the queue."""
        self.queue_messages.set(stats.messages)
        self.queue_bytes.set(stats.bytes)
        self._waiting.set(stats.queued - stats.deferred)
        self._deferred.set(stats.deferred)
        self._held.set(stats.held)
        self.queue_oldest_age.set(max(0.0, now - stats.oldest) if stats.oldest else 0.0)

    def shown_through(self, view: Collector) -> None:
        """/metrics shows `view` instead of this registry alone (with workers: every worker's
        figures added up, server/workerfigures.py)."""
        self._view = view

    def exposition(self) -> bytes:
        """The Prometheus text format of everything, as served on /metrics."""
        return generate_latest(self._view)


async def refresh_queue(
    metrics: Metrics,
    stats: Callable[[], Awaitable[QueueStats]],
    now: Callable[[], float],
    interval: float = QUEUE_REFRESH_SECONDS,
) -> None:
    """Read the queue figures every `interval` seconds, until cancelled. A failed reading
    is logged and counted; the gauges keep their last values."""
    while True:
        try:
            metrics.queue(await stats(), now())
        except (QueueError, OSError) as exc:
            metrics.queue_refresh_failures.inc()
            log.warning(logfmt("metrics-queue-failed", error=exc))
        await asyncio.sleep(interval)


# ---- the HTTP endpoint ----


def metrics_app(metrics: Metrics) -> web.Application:
    """GET /metrics in the Prometheus text exposition format (prometheus_client's latest)."""
    from aiohttp import web  # only with [metrics] address (issue 15 item 2: memory)

    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


class MetricsServer:
    """The bound endpoint: `port` is the one listened on (useful with port 0)."""

    def __init__(self, site: GuardedSite, host: str) -> None:
        self._site = site
        self.host = host
        self.port = site.port

    async def aclose(self) -> None:
        await self._site.aclose()


async def bind_metrics(
    address: HostPort, metrics: Metrics, limits: HttpLimits | None = None
) -> MetricsServer:
    """Listen on `address` (behind `limits`: server/httpguard.py); raises MetricsBindError
    naming the address and the fix."""
    host = f"[{address.host}]" if ":" in address.host else address.host
    shown = f"{host}:{address.port}"
    try:
        site = await serve_guarded(
            metrics_app(metrics), address.host, address.port, "metrics", limits or HttpLimits()
        )
    except OSError as exc:
        raise MetricsBindError(
            f"metrics.address {shown}: cannot listen: {exc.strerror or exc}; "
            "pick a free port or remove [metrics]"
        ) from exc
    log.info(logfmt("listening", role="metrics", address=f"{host}:{site.port}"))
    return MetricsServer(site, address.host)


async def serve_metrics(address: HostPort, metrics: Metrics) -> None:
    """Bind (MetricsBindError if it cannot) and serve until cancelled."""
    server = await bind_metrics(address, metrics)
    try:
        await asyncio.Event().wait()
    finally:
        await server.aclose()
