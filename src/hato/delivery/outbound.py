"""The outbound courier: SMTP (or LMTP) to other hosts, by MX, transport table or smarthost.

Theory of operation: `OutboundCourier.deliver` groups a message's recipients by destination
(the recipient domain for MX routing, or the relay/LMTP host or smarthost that the transport
table names) and delivers the groups concurrently, each inside a concurrency slot for its
destination and a time bound for the whole attempt. For one group:

1. the hops: the MX hosts in order (RFC 5321 §5.1; implicit MX; null MX and NXDOMAIN are
   permanent; a DNS failure temporary), the address literal, or the configured host;
2. the TLS policy per hop (tlspolicy.decide: the domain's table level, MTA-STS, DANE,
   REQUIRETLS); a refusal is kept as the recipients' reply and the next hop is tried;
3. per hop, each address (AAAA first, then A; loopback and our own addresses are a mail loop
   unless allowed); a pooled session is reused (RSET, pipelined with the next MAIL when the
   peer offers PIPELINING: one that turns out dead there is replaced by a new connection for
   the same transaction), else one is opened; a peer whose EHLO names us is a loop too (5.4.6);
4. one transaction; Delivered and 5xx outcomes are final, 4xx recipients go on to the next
   address or hop (RFC 5321 §5.1: try the next MX); a connection-level failure does the same
   for all of them, except a 5xx greeting/AUTH, which is final, and a failed opportunistic TLS
   handshake, after which the same address is tried once without TLS (RFC 3207 §4.1).
What is still pending when the hops run out keeps the last reply it got.

Steps 1-3 are route planning (outbound_route.RoutePlanner: no connection of its own); step 4 and
the walk over hops and addresses are one `Attempt` (outbound_attempt.py), handed the planner and
the courier's connections (`Links`), so it never calls back into the courier.

Must not import anything of hato but model, smtp, reports (the TLS report events) and delivery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence

from hato.delivery.egress import EgressMonitor
from hato.delivery.mtasts import MtaSts
from hato.delivery.outbound_attempt import Attempt, Links, Session
from hato.delivery.outbound_pool import ConnectionPool, Limiter, PoolKey
from hato.delivery.outbound_route import Destination, RoutePlanner
from hato.delivery.smtp_client import ClientSession, ConnectOptions, DeliveryError
from hato.delivery.tlsreport import TlsReporting
from hato.delivery.transport import OutboundSettings, TransportKind
from hato.model import Clock, Outcome, QueuedMessage, QueuedRecipient, Reply, TempFailed, logfmt
from hato.model.dns import Resolver

log = logging.getLogger("hato.delivery.outbound")

ATTEMPT_TIMEOUT = Reply(451, "4.4.1", "Delivery attempt timed out")


Opener = Callable[[ConnectOptions], Awaitable[Session]]
_ERRORS = (DeliveryError, OSError, TimeoutError)


class OutboundCourier:
    """hato.model.Courier for mail to other hosts; see the module docstring."""

    def __init__(
        self,
        settings: OutboundSettings,
        resolver: Resolver,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        mta_sts: MtaSts | None = None,
        dane_resolver: Resolver | None = None,
        verify_context: ssl.SSLContext | None = None,
        smarthost_context: ssl.SSLContext | None = None,
        opener: Opener | None = None,
        own_names: Collection[str] = (),
    ) -> None:
        self._settings = settings
        self._planner = RoutePlanner(
            settings,
            resolver,
            rng=rng,
            mta_sts=mta_sts,
            dane_resolver=dane_resolver,
            verify_context=verify_context,
            smarthost_context=smarthost_context,
            own_names=own_names,
        )
        self._open: Opener = opener or ClientSession.open
        self.pool: ConnectionPool[Session] = ConnectionPool(
            clock, settings.idle_timeout, settings.max_messages_per_connection, _ERRORS
        )
        self.limiter = Limiter(settings.max_connections_per_domain, settings.max_connections)
        self.egress = EgressMonitor(clock)
        self.tls_reports: TlsReporting | None = None  # [reports] tlsrpt (delivery/tlsreport.py)

    def reconfigure(
        self,
        settings: OutboundSettings,
        verify_context: ssl.SSLContext,
        smarthost_context: ssl.SSLContext | None,
    ) -> None:
        """A reload: the next attempts use these routes (transports, smarthost), timeouts and
        trust. The pool's and limiter's sizes stay; the composition root restarts for those."""
        self._settings = settings
        self._planner.reconfigure(settings, verify_context, smarthost_context)

    def behind_lmtp(self, domain: str) -> bool:
        """Whether mail for `domain` is handed over by LMTP (its [[transport]] lmtp), as the
        settings in force say (a reload changes them). Asked for every local delivery: with
        no LMTP transport at all, the domain's name is not even normalized."""
        settings = self._settings
        if not any(t.kind is TransportKind.LMTP for t in settings.transports.values()):
            return False
        return settings.transport_for(domain).kind is TransportKind.LMTP

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def run_sweeper(self) -> None:
        await self.pool.run_sweeper()

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        groups: dict[Destination, list[QueuedRecipient]] = {}
        for rcpt in recipients:
            groups.setdefault(self._planner.destination(rcpt, fallback=self._fallback), []).append(
                rcpt
            )
        done: dict[int, Outcome] = {}
        async with asyncio.TaskGroup() as tasks:
            for dest, rcpts in groups.items():
                tasks.create_task(self._group(dest, message, rcpts, done))
        return [done[r.row_id] for r in recipients]

    async def _group(
        self,
        dest: Destination,
        message: QueuedMessage,
        rcpts: list[QueuedRecipient],
        done: dict[int, Outcome],
    ) -> None:
        async with self.limiter.slot(dest.name):
            try:
                async with asyncio.timeout(self._settings.attempt_timeout):
                    links = Links(
                        self.connect, self.connect_new, self.pool, self.egress, self.tls_reports
                    )
                    attempt = Attempt(self._planner, links, dest, message, rcpts)
                    outcomes = await attempt.run()
            except TimeoutError:
                outcomes = {r.row_id: TempFailed(ATTEMPT_TIMEOUT) for r in rcpts}
        deferred = [r for r in rcpts if isinstance(outcomes[r.row_id], TempFailed)]
        if dest.kind is TransportKind.MX and deferred and self._fallback():
            # Port 25 turned out blocked during this attempt: the smarthost takes them now.
            smarthost = Destination(TransportKind.SMARTHOST, "smarthost", "", dest.tls)
            await self._group(smarthost, message, deferred, done)
            outcomes = {k: v for k, v in outcomes.items() if k not in done}
        done.update(outcomes)

    def _fallback(self) -> bool:
        smarthost = self._settings.smarthost
        return smarthost is not None and smarthost.fallback and self.egress.use_fallback()

    def egress_problems(self) -> list[str]:
        """What `hato status` says about outbound port 25 (nothing while it works)."""
        smarthost = self._settings.smarthost
        return self.egress.problems(fallback=smarthost is not None and smarthost.fallback)

    async def connect(self, options: ConnectOptions, key: PoolKey) -> Session:
        """A pooled session for `key` (RSET done), else a new connection."""
        session = await self.pool.take(key)
        if session is not None:
            log.debug(logfmt("connection-reused", host=options.host, port=options.port))
            return session
        return await self.connect_new(options)

    async def connect_new(self, options: ConnectOptions) -> Session:
        """A new connection (after a reused one turned out dead: outbound_attempt.py)."""
        session = await self._open(options)
        self.pool.lent(session)
        return session
