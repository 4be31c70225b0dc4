"""One delivery attempt of one destination group, for the outbound courier (outbound.py).

`Attempt.run` walks the hops and addresses the route planner (outbound_route.py) answers and
keeps, per recipient, the final outcome (Delivered, 5xx) or the latest temporary one; see
outbound.py's docstring. What it needs of the courier (connections, the pool, the egress
monitor, the TLS reports) it is handed as `Links`; it never calls back into the courier.

Must not import anything of hato but model, smtp, reports (the TLS report events) and delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, assert_never

from hato.delivery.egress import EgressMonitor
from hato.delivery.mx import MAIL_LOOP, NO_ADDRESS, RouteError
from hato.delivery.outbound_body import needs_smtputf8, read_head, tls_required_no, wire_body
from hato.delivery.outbound_pool import ConnectionPool, PoolKey
from hato.delivery.outbound_route import Destination, Hop, RoutePlanner
from hato.delivery.smtp_client import (
    BodySource,
    Capabilities,
    ConnectOptions,
    DeliveryError,
    MailParams,
    RecipientSpec,
    SendResult,
    TlsInfo,
)
from hato.delivery.tlspolicy import (
    HopTls,
    PolicyInputs,
    PolicyRefusal,
    TlsLevel,
    requiretls_refusal,
)
from hato.delivery.tlsreport import TlsReporting, failure_of, refusal_failure
from hato.delivery.transport import TransportKind
from hato.model import (
    Delivered,
    Handoff,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    ReversePath,
    TempFailed,
    logfmt,
)
from hato.model.dsn import xtext_decode
from hato.reports import TlsFailure

log = logging.getLogger("hato.delivery.outbound")

CONNECTION_LOST = Reply(421, "4.4.2", "Connection to the mail server lost")
BODY_READ_ERROR = Reply(451, "4.3.0", "Local error reading the message")


class Session(Protocol):
    """What the courier needs of hato.delivery.smtp_client.ClientSession (fakes in tests)."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def tls(self) -> TlsInfo | None: ...

    @property
    def usable(self) -> bool: ...

    async def send(
        self,
        mail_from: ReversePath,
        recipients: Sequence[RecipientSpec],
        body: BodySource,
        *,
        mail_params: MailParams | None = None,
    ) -> SendResult: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


def pool_key(options: ConnectOptions, tls: HopTls) -> PoolKey:
    auth = options.auth[0] if options.auth else None
    mode = f"{options.tls_mode.name}/{tls.level.value}"
    return PoolKey(options.host, options.port, mode, options.server_name, options.lmtp, auth)


@dataclass(frozen=True, slots=True)
class Links:
    """What an attempt uses of its courier besides the route planner."""

    connect: Callable[[ConnectOptions, PoolKey], Awaitable[Session]]  # pooled or new
    connect_new: Callable[[ConnectOptions], Awaitable[Session]]  # always a new connection
    pool: ConnectionPool[Session]  # to park or discard a session after the transaction
    egress: EgressMonitor  # port 25 reachability, fed by every connection
    tls_reports: TlsReporting | None  # [reports] tlsrpt, or None


class Attempt:
    """One delivery attempt of one group (see the module docstring, steps 1-4)."""

    def __init__(
        self,
        planner: RoutePlanner,
        links: Links,
        dest: Destination,
        message: QueuedMessage,
        rcpts: list[QueuedRecipient],
    ) -> None:
        self.planner = planner
        self.links = links
        self.dest = dest
        self.message = message
        self.pending = list(rcpts)
        self.final: dict[int, Outcome] = {}
        self.latest: dict[int, Outcome] = {r.row_id: TempFailed(NO_ADDRESS) for r in rcpts}
        # RFC 8689 §4.2.1: the rules bind a message with a return path (a bounce from <> is
        # never held back by them); RFC 8689 §4.4: LMTP hands it to the mailbox (final delivery).
        self.requiretls = (
            "REQUIRETLS" in message.params
            and message.mail_from is not None
            and dest.kind is not TransportKind.LMTP
        )
        self.head = b""
        self.inputs: PolicyInputs | None = None
        self.tls_used = False  # the last transaction ran over TLS (for the TLS reports)

    async def run(self) -> dict[int, Outcome]:
        hops = await self.planner.hops(self.dest)
        if isinstance(hops, RouteError):
            failure = _failed(hops.reply)
            return {r.row_id: failure for r in self.pending}
        try:
            self.head = await read_head(self.message)
        except OSError:
            return {r.row_id: TempFailed(BODY_READ_ERROR) for r in self.pending}
        # RFC 8689 §4.1: "TLS-Required: No" counts only without the REQUIRETLS parameter.
        optional = not self.requiretls and tls_required_no(self.head)
        inputs = await self.planner.policy_inputs(self.dest, self.requiretls, optional)
        self.inputs = inputs
        self._sts_problem(inputs)
        for hop in hops:
            if not self.pending:
                break
            await self._hop(inputs, hop)
        return {**self.latest, **self.final}

    async def _hop(self, inputs: PolicyInputs, hop: Hop) -> None:
        tls = await self.planner.hop_tls(inputs, hop)
        if isinstance(tls, PolicyRefusal):
            log.warning(logfmt("tls-policy-refused", host=hop.host, reply=str(tls.reply)))
            reporting = self._reporting(hop)
            if reporting is not None:
                failure = refusal_failure(tls)
                reporting.failure(inputs, None, hop.host, "", failure, tls.reply.text)
            self._fail_all(_failed(tls.reply))  # a 5.7.30 (REQUIRETLS) is final with no hop left
            return
        addresses = await self.planner.addresses(hop)
        if isinstance(addresses, Reply):
            self._fail_all(_failed(addresses))  # final only if no later hop does better
            return
        for address in addresses:
            if not self.pending:
                return
            await self._address(hop, address, tls)

    async def _address(self, hop: Hop, address: str, tls: HopTls) -> None:
        options = self.planner.options(hop, address, tls, plaintext=False)
        mx = hop.smarthost is None and not hop.configured and not hop.lmtp
        reporting = self._reporting(hop)
        try:
            await self._transaction(options, tls)
            if mx:
                self.links.egress.connected()
            if reporting is not None and self.inputs is not None and self.tls_used:
                reporting.success(self.inputs, tls, hop.host, address)
        except DeliveryError as exc:
            if reporting is not None and self.inputs is not None and exc.stage == "tls":
                failure = failure_of(exc, tls)
                reporting.failure(self.inputs, tls, hop.host, address, failure, exc.reply.text)
            if mx:
                # delivery/egress.py: many MX hosts failing at TCP connect means OP25B.
                if exc.stage == "connect":
                    self.links.egress.connect_failed(hop.host)
                else:
                    self.links.egress.connected()
            if exc.stage == "tls" and tls.level is TlsLevel.MAY and not exc.tls_policy:
                # RFC 3207 §4.1 / RFC 7435: opportunistic TLS failed; plaintext beats no mail.
                log.info(logfmt("starttls-failed-retry-plain", host=hop.host, address=address))
                plain = self.planner.options(hop, address, tls, plaintext=True)
                try:
                    await self._transaction(plain, tls)
                except DeliveryError as again:
                    self._connection_failed(hop, address, again)
                return
            self._connection_failed(hop, address, exc)

    def _sts_problem(self, inputs: PolicyInputs) -> None:
        """RFC 8460 §4.3: an MTA-STS policy that could not be fetched is a failure to report."""
        reporting = self.links.tls_reports
        if reporting is None or inputs.sts is not None or self.dest.kind is not TransportKind.MX:
            return
        problem = self.planner.sts_problem(self.dest.domain) if self.dest.domain else None
        if problem is not None:
            reporting.sts_failure(inputs, TlsFailure(problem[0]), problem[1])

    def _reporting(self, hop: Hop) -> TlsReporting | None:
        """[reports] tlsrpt: only MX hops are a domain's policy (RFC 8460 §4)."""
        reporting = self.links.tls_reports
        mx = hop.smarthost is None and not hop.configured and not hop.lmtp
        return reporting if mx and self.dest.domain else None

    def _connection_failed(self, hop: Hop, address: str, exc: DeliveryError) -> None:
        log.info(
            logfmt("connection-failed", host=hop.host, address=address, stage=exc.stage,
                   reply=str(exc.reply))
        )  # fmt: skip
        if exc.permanent and not exc.tls_policy:
            # A 5xx greeting or AUTH answer is the server's final word (RFC 5321 §3.1).
            self._fail_all(PermFailed(exc.reply))
            self._finish_all()
        elif exc.tls_policy and self.requiretls:
            # RFC 8689 §4.2.1 steps 4-5: no verified TLS with this host; the next may do, and
            # with none left the sender is told (RFC 8689 §5: 5.7.30).
            reply = requiretls_refusal(f"no verified TLS with {hop.host}: {exc.reply.text}")
            self._fail_all(PermFailed(reply))
        else:
            self._fail_all(TempFailed(exc.reply))

    async def _transaction(
        self, options: ConnectOptions, tls: HopTls, *, new: bool = False
    ) -> None:
        """One transaction on a pooled session (a new one if `new`). A reused session found
        dead by its RSET (`stale`: nothing delivered) hands the transaction to a new one."""
        key = pool_key(options, tls)
        if new:
            session = await self.links.connect_new(options)
        else:
            session = await self.links.connect(options, key)
        stale = False
        self.tls_used = session.tls is not None
        keep = False
        try:
            # An LMTP server (Dovecot) often greets with this machine's own name: no loop.
            if not options.lmtp and self.planner.is_us(session.capabilities):
                log.warning(
                    logfmt("mx-loop", host=options.host, peer=session.capabilities.server_name)
                )
                self._fail_all(PermFailed(MAIL_LOOP))
                self._finish_all()
                return
            refusal = self._refusal(session, options.server_name or options.host)
            if refusal is not None:
                self._fail_all(PermFailed(refusal))  # the next hop may do better
                keep = session.usable
                return
            try:
                body = await wire_body(self.message, self.head, session.capabilities)
            except OSError:
                body = BODY_READ_ERROR
            if isinstance(body, Reply):
                self._fail_all(_failed(body))  # the next hop may do better
                keep = session.usable
                return
            result = await self._send(session, body, options.lmtp)
            stale = result.stale and not new
            if not stale:
                self._record(options, result.outcomes)
            keep = session.usable
        finally:
            if keep:
                await self.links.pool.park(key, session)
            else:
                await self.links.pool.discard(session)
        if stale:
            log.info(logfmt("connection-stale", host=options.host, port=options.port))
            await self._transaction(options, tls, new=True)

    def _refusal(self, session: Session, host: str) -> Reply | None:
        tls = session.tls
        if self.requiretls and (tls is None or not tls.verified):
            # RFC 8689 §4.2.1 step 4: a verified certificate (a guard: the policy asked for it).
            return requiretls_refusal(f"no verified TLS with {host}")
        if self.requiretls and not session.capabilities.requiretls:
            # RFC 8689 §4.2.1 step 5: the EHLO after TLS must offer REQUIRETLS.
            return requiretls_refusal(f"{host} does not offer REQUIRETLS")
        return None

    async def _send(self, session: Session, body: BodySource, lmtp: bool = False) -> SendResult:
        params = self.message.params
        envid = params.get("ENVID")
        mail_params = MailParams(
            # The stored ENVID is the client's xtext; the client encodes it again (RFC 3461 §4).
            envid=xtext_decode(envid) if envid else None,
            ret=params.get("RET"),
            requiretls=self.requiretls,
            # RFC 6531 §3.4: SMTPUTF8 when the header section has UTF-8 (else it was downgraded).
            smtputf8=session.capabilities.smtputf8 and needs_smtputf8(self.message, self.head),
        )
        # RFC 3461 §4.1/§4.2: NOTIFY as the client asked, ORCPT as given (or the address the
        # client gave in RCPT, when it gave no ORCPT).
        specs = [
            RecipientSpec(
                r.address,
                notify=r.dsn.notify_param,
                orcpt=r.dsn.orcpt or f"rfc822;{r.original}",
            )
            for r in self.pending
        ]
        try:
            result = await session.send(
                self.message.mail_from, specs, body, mail_params=mail_params
            )
        except (OSError, TimeoutError):
            return SendResult(tuple(TempFailed(CONNECTION_LOST) for _ in specs))
        # RFC 3461 §5.2: who reports success depends on whether the next hop took the DSN
        # request; and Remote-MTA in our own reports names the host that answered.
        if lmtp:
            handoff = Handoff.MAILBOX  # RFC 2033: the LMTP server delivered it finally
        else:
            handoff = Handoff.RELAYED_DSN if session.capabilities.dsn else Handoff.RELAYED
        host = session.capabilities.server_name or ""
        outcomes = tuple(_annotate(o, handoff, host) for o in result.outcomes)
        return SendResult(outcomes, result.reply, result.stale)

    def _record(self, options: ConnectOptions, outcomes: Sequence[Outcome]) -> None:
        still: list[QueuedRecipient] = []
        for rcpt, outcome in zip(self.pending, outcomes, strict=True):
            log.info(
                logfmt("delivery", id=self.message.queue_id, rcpt=str(rcpt.address),
                       host=options.host, port=options.port, result=_describe(outcome))
            )  # fmt: skip
            self.latest[rcpt.row_id] = outcome
            if isinstance(outcome, TempFailed):
                still.append(rcpt)  # RFC 5321 §5.1: a 4xx here: the next MX may take it
            else:
                self.final[rcpt.row_id] = outcome
        self.pending = still

    def _fail_all(self, outcome: Outcome) -> None:
        for rcpt in self.pending:
            self.latest[rcpt.row_id] = outcome

    def _finish_all(self) -> None:
        for rcpt in self.pending:
            self.final[rcpt.row_id] = self.latest[rcpt.row_id]
        self.pending = []


def _annotate(outcome: Outcome, handoff: Handoff, host: str) -> Outcome:
    match outcome:
        case Delivered():
            return replace(outcome, handoff=handoff)
        case TempFailed() | PermFailed():
            return replace(outcome, remote_mta=host or None)
        case _:
            assert_never(outcome)


def _failed(reply: Reply) -> Outcome:
    return PermFailed(reply) if reply.is_permanent else TempFailed(reply)


def _describe(outcome: Outcome) -> str:
    match outcome:
        case Delivered(detail=detail):
            return f"delivered {detail}".strip()
        case TempFailed(reply=reply) | PermFailed(reply=reply):
            return str(reply)
        case _:
            assert_never(outcome)
