"""One SMTP session: socket bytes into the sans-IO core, its events into decisions.

Theory of operation: an asyncio Protocol (not streams: one callback per read, no per-line
awaits). Every read is fed to `ServerConnection.receive_data`; events are drained until the core
needs more data or waits for a decision; all replies produced by one read are written in one
`transport.write` (batching; PIPELINING per RFC 2920). Only the end of a message needs to wait for
I/O (the durable queue commit): reading is paused meanwhile and the core stays PAUSED, so replies
keep their order and a fast client cannot pile up input.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from hato.delivery.local import Local, NotLocal, RecipientResolver
from hato.model import Address, Clock, Reply, Role, logfmt
from hato.policy import (
    Accept,
    Defer,
    RecipientFacts,
    Reject,
    SenderFacts,
    mail_from_decision,
    rcpt_decision,
)
from hato.queue import Queue, QueueWriteError
from hato.server.received import TraceInfo, received_header
from hato.smtp import (
    NEED_DATA,
    PAUSED,
    AuthCancelled,
    AuthRequest,
    AuthResponse,
    BodyChunk,
    CloseConnection,
    ConnectionLost,
    DataStart,
    Hello,
    MailFrom,
    MessageAborted,
    MessageEnd,
    ProtocolError,
    RcptTo,
    ServerConnection,
    ServerSettings,
    StartTLSRequest,
    TransactionReset,
)

if TYPE_CHECKING:
    from hato.queue import BodyWriter

log = logging.getLogger("hato.smtpd")

TEMP_FAILURE = Reply(451, "4.3.0", "Temporary local problem, please try again later")
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session too long, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
NOT_SUPPORTED = Reply(502, "5.5.1", "Command not supported here")


@dataclass(slots=True)
class SessionContext:
    """What every session of one listener shares (built once by the composition root)."""

    role: Role
    settings: ServerSettings
    queue: Queue
    resolver: RecipientResolver
    clock: Clock
    idle_timeout: float
    session_timeout: float
    listener: ListenerState


@dataclass(slots=True)
class ListenerState:
    """Connection accounting for one listener (limits per listener and per client IP)."""

    name: str
    max_connections: int
    max_per_ip: int
    active: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    sessions: set[SmtpSession] = field(default_factory=set)
    empty: asyncio.Event = field(default_factory=asyncio.Event)  # set while no session is open

    def __post_init__(self) -> None:
        self.empty.set()

    def admit(self, ip: str) -> bool:
        return self.active < self.max_connections and self.per_ip.get(ip, 0) < self.max_per_ip

    def enter(self, session: SmtpSession, ip: str) -> None:
        self.active += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.sessions.add(session)
        self.empty.clear()

    def leave(self, session: SmtpSession, ip: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.active -= 1
        if not self.sessions:
            self.empty.set()
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left


class SmtpSession(asyncio.Protocol):
    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.conn = ServerConnection(ctx.settings)
        self.client_ip = "unknown"
        self.client_port = 0
        self.session_id = ""
        self.body: BodyWriter | None = None
        self.mail_from: MailFrom | None = None
        self.recipients: list[tuple[Address, Address]] = []  # (deliver-to, original)
        self.rcpt_originals: list[Address] = []
        self.busy = False  # a queue commit is in flight
        self.closing = False
        self.draining = False
        self.last_activity = 0.0
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.commit_task: asyncio.Task[None] | None = None
        self.messages = 0

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        now = self.ctx.clock.monotonic()
        self.started = self.last_activity = now
        self.session_id = f"{id(self):x}"
        listener = self.ctx.listener
        if not listener.admit(self.client_ip):
            # RFC 5321 §3.8: 421 when the service is not available to this client now.
            log.warning(
                logfmt(
                    "connection-refused",
                    listener=listener.name,
                    client=self.client_ip,
                    reason="connection-limit",
                )
            )
            transport.write(Reply(421, "4.7.0", "Too many connections, try again later").to_bytes())
            transport.close()
            self.closing = True
            return
        listener.enter(self, self.client_ip)
        log.info(
            logfmt(
                "connect",
                session=self.session_id,
                listener=listener.name,
                client=self.client_ip,
                port=self.client_port,
            )
        )
        self.conn.greet()
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = self.ctx.clock.monotonic()
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if not self.closing:
            self.conn.receive_data(b"")
            self._process()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self._discard_body()
        self.ctx.listener.leave(self, self.client_ip)
        log.info(
            logfmt(
                "disconnect",
                session=self.session_id,
                client=self.client_ip,
                messages=self.messages,
                error=exc,
            )
        )

    # ---- the event pump ----

    def _process(self) -> None:
        try:
            while not self.closing and not self.busy:
                event = self.conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                self._handle(event)
        except Exception:
            # STYLE.md: the one catch-all at the top of a session: answer 421, log, close.
            log.exception(logfmt("session-error", session=self.session_id))
            self._close_with(Reply(421, "4.3.0", "Internal error, closing connection"))
            return
        self._flush()

    def _handle(self, event: object) -> None:
        match event:
            case Hello():
                self.conn.accept()
            case MailFrom():
                self._on_mail(event)
            case RcptTo():
                self._on_rcpt(event)
            case DataStart():
                self.body = self.ctx.queue.new_body()
            case BodyChunk(data=data):
                if self.body is not None:
                    self.body.write(data)
            case MessageEnd():
                self._on_message_end()
            case MessageAborted(reply=reply):
                log.info(logfmt("message-refused", session=self.session_id, reply=reply))
                self._discard_body()
                self._reset_transaction()
            case TransactionReset():
                self._discard_body()
                self._reset_transaction()
            case ProtocolError(reply=reply, detail=detail):
                log.info(
                    logfmt(
                        "protocol-error",
                        session=self.session_id,
                        client=self.client_ip,
                        reply=reply.code,
                        detail=detail,
                    )
                )
            case CloseConnection():
                self._flush()
                self.closing = True
                if self.transport is not None:
                    self.transport.close()
            case ConnectionLost():
                self._discard_body()
                self.closing = True
                if self.transport is not None:
                    self.transport.close()
            case StartTLSRequest() | AuthRequest() | AuthResponse():
                # Not offered on this listener, so the core never asks; answer safely anyway.
                self.conn.reply(NOT_SUPPORTED)
            case AuthCancelled():
                pass
            case _:
                raise AssertionError(f"unhandled SMTP event {event!r}")

    # ---- verbs that need a decision ----

    def _on_mail(self, event: MailFrom) -> None:
        self._discard_body()
        self._reset_transaction()
        facts = SenderFacts(
            role=self.ctx.role, queue_has_room=self.ctx.queue.has_room(event.size or 0)
        )
        decision = mail_from_decision(facts)
        if isinstance(decision, Accept):
            self.mail_from = event
            self.conn.accept()
        else:
            self.conn.reply(decision.reply)

    def _on_rcpt(self, event: RcptTo) -> None:
        resolution = self.ctx.resolver.resolve(event.address)
        facts = RecipientFacts(
            role=self.ctx.role,
            local_domain=not isinstance(resolution, NotLocal),
            known=isinstance(resolution, Local),
        )
        decision = rcpt_decision(facts)
        match decision:
            case Accept():
                if isinstance(resolution, Local):
                    # Aliases may expand to several mailboxes; each gets one queue row, once.
                    known = {dest for dest, _ in self.recipients}
                    for dest in (*resolution.mailboxes, *resolution.forwards):
                        if dest not in known:
                            self.recipients.append((dest, event.address))
                            known.add(dest)
                else:
                    self.recipients.append((event.address, event.address))
                self.rcpt_originals.append(event.address)
                self.conn.accept()
            case Reject(reply=reply) | Defer(reply=reply):
                log.info(
                    logfmt(
                        "rcpt-refused",
                        session=self.session_id,
                        client=self.client_ip,
                        rcpt=event.address,
                        reply=reply.code,
                    )
                )
                self.conn.reply(reply)

    def _on_message_end(self) -> None:
        body, mail = self.body, self.mail_from
        self.body = None
        if body is None or mail is None or not self.recipients:
            # Cannot happen with a correct core; refuse rather than accept blindly.
            self.conn.reply(TEMP_FAILURE)
            return
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.commit_task = asyncio.get_running_loop().create_task(self._commit(body, mail))

    async def _commit(self, body: BodyWriter, mail: MailFrom) -> None:
        recipients, originals = self.recipients, self.rcpt_originals
        self._reset_transaction()
        info = TraceInfo(
            helo=self.conn.hello_name or "",
            client_ip=self.client_ip,
            hostname=self.ctx.settings.hostname,
            esmtp=self.conn.esmtp,
            tls=self.conn.tls_active,
            authenticated=self.conn.authenticated,
            smtputf8=mail.smtputf8,
        )
        prefix = received_header(info, body.queue_id, originals, self.ctx.clock.now())
        params: dict[str, str | None] = dict(mail.params)
        try:
            queue_id = await self.ctx.queue.commit(
                body, mail_from=mail.path, recipients=recipients, prefix=prefix, params=params
            )
        except QueueWriteError as exc:
            reply = exc.reply
            log.warning(
                logfmt("queue-write-failed", session=self.session_id, error=exc, reply=reply.code)
            )
            self._answer_after_commit(reply)
            return
        except Exception:
            log.exception(logfmt("queue-commit-error", session=self.session_id))
            self._answer_after_commit(TEMP_FAILURE)
            return
        self.messages += 1
        log.info(
            logfmt(
                "accepted",
                session=self.session_id,
                id=queue_id,
                client=self.client_ip,
                nrcpt=len(recipients),
            )
        )
        self._answer_after_commit(None, f"Ok: queued as {queue_id}")

    def _answer_after_commit(self, reply: Reply | None, text: str | None = None) -> None:
        self.busy = False
        self.commit_task = None
        if self.closing:
            return
        if reply is None:
            self.conn.accept(text)
        else:
            self.conn.reply(reply)
        if self.transport is not None:
            self.transport.resume_reading()
        self._process()
        if self.draining and not self.closing:
            self._close_with(SHUTTING_DOWN)

    # ---- helpers ----

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self.recipients = []
        self.rcpt_originals = []

    def _discard_body(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _close_with(self, reply: Reply) -> None:
        if self.closing or self.transport is None:
            return
        self._flush()
        self.transport.write(reply.to_bytes())
        self.closing = True
        self.transport.close()

    # ---- timeouts (RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command) ----

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.ctx.clock.monotonic()
        due = min(
            self.last_activity + self.ctx.idle_timeout, self.started + self.ctx.session_timeout
        )
        self.timer = loop.call_later(max(0.05, due - now), self._on_timer)

    def _on_timer(self) -> None:
        if self.closing:
            return
        now = self.ctx.clock.monotonic()
        if now - self.started >= self.ctx.session_timeout:
            log.info(logfmt("timeout", session=self.session_id, kind="session"))
            self._close_with(SESSION_TOO_LONG)
            return
        if not self.busy and now - self.last_activity >= self.ctx.idle_timeout:
            log.info(logfmt("timeout", session=self.session_id, kind="idle"))
            self._close_with(TIMEOUT)
            return
        self._arm_timer()

    # ---- graceful stop ----

    def drain(self) -> None:
        """Stop after the transaction in progress: idle sessions get 421 now; a session
        receiving or committing a message finishes it first (its 250 or error), then 421."""
        self.draining = True
        if self.busy or self.body is not None:
            return
        self._close_with(SHUTTING_DOWN)
