"""One SMTP session: socket bytes into the sans-IO core, its events into decisions.

Theory of operation: an asyncio Protocol (not streams: one callback per read, no per-line
awaits). Every read is fed to `ServerConnection.receive_data`; events are drained until the core
needs more data or waits for a decision; all replies produced by one read are written in one
`transport.write` (batching; PIPELINING per RFC 2920). A decision that needs I/O (the durable
queue commit, the TLS handshake, a password check) runs as one task while reading is paused and
the core stays PAUSED, so replies keep their order and a fast client cannot pile up input.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from hato.intake.capture import MessageCapture
from hato.intake.finish import open_capture
from hato.intake.incoming import Incoming
from hato.intake.transaction import Transaction
from hato.model import Address, Reply, logfmt, logvalue, moment
from hato.policy import AUTH_BLOCKED, Reservation
from hato.server.backpressure import WriteBackpressure
from hato.server.context import SessionContext
from hato.server.greeting import before_greeting, screens
from hato.server.login import Login
from hato.server.mailsteps import MailTransaction
from hato.server.screen import Screened
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
    StartTLSRequest,
    TransactionReset,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("hato.smtpd")

TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session too long, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
NO_TLS = Reply(454, "4.7.0", "TLS not available")
INTERNAL_ERROR = Reply(421, "4.3.0", "Internal error, closing connection")
TOO_MANY = Reply(421, "4.7.0", "Too many connections, try again later")
# uvloop reads a busy socket up to 32 times per turn of the loop: megabytes of DATA in one go,
# while every other session waits. After this many octets a session lets the others go first.
BURST = 256 * 1024
# RFC 5321 §3.8: after a 421 the server closes the channel. Over TLS, `close()` sends our
# close_notify and then waits for the client's (the loop's ssl_shutdown_timeout, 30 s); a client
# that never answers or never reads would hold the connection that long. RFC 8446 §6.1 does not
# ask the closing side to wait for the reply, so a closed session is aborted after this.
CLOSE_GRACE = 2.0
# The heads of the lines logged for every connection, made once; their fields are added by hand
# as `logfmt` would add them (issue 15: a `logfmt` call per line was ~4 % of a connection).
CONNECT = logfmt("connect")
DISCONNECT = logfmt("disconnect")


class SmtpSession(MailTransaction, WriteBackpressure, asyncio.Protocol):
    """The protocol glue of one session (module docstring); its mail transaction steps are
    `MailTransaction`'s (mailsteps.py), its write-side flow control `WriteBackpressure`'s."""

    login: Login  # AUTH; made in `connection_made`, once the client and session id are known

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        # The loop the session runs in, asked once at connect: every `get_running_loop()` is a
        # getpid(2) in CPython 3.11 (a fork check), and a session asked it two to four times.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conn = ServerConnection(ctx.settings, tls_active=ctx.implicit_tls)
        self.client_ip = "unknown"
        self.client_port = 0
        self.session_id = ""
        self.incoming: Incoming | None = None  # the message DATA is bringing
        self.tx: Transaction | None = None  # after MAIL FROM: the envelope so far
        self.user: Address | None = None  # the authenticated account
        self.committing: Reservation | None = None  # that of the message being committed
        self.tls_detail = ""
        self.busy = False  # a task (commit, handshake, password check) is in flight
        self.closing = False
        self.linger: asyncio.TimerHandle | None = None  # the abort after CLOSE_GRACE
        self.draining = False
        self.last_activity = 0.0
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.messages = 0
        self.capture: MessageCapture | None = None  # the message, for authentication checks
        self.burst = 0  # octets read since reading last paused for the other sessions
        self.screened = Screened()  # what the mx [screen] found before the greeting

    # ---- asyncio callbacks ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.loop = self.ctx.loop or asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        if self.ctx.implicit_tls:
            self._note_tls(transport)
        now = self.ctx.clock.monotonic()
        self.started = self.last_activity = now
        self.session_id = next(self.ctx.ids)
        self.login = Login(self.ctx, self.client_ip, self.session_id)
        listener = self.ctx.listener
        self.ctx.metrics.connection()
        # Port 465's connections were admitted (and counted) at accept, before their TLS
        # handshake (server/implicit.py).
        if not self.ctx.implicit_tls and not listener.admit(self.client_ip):
            # RFC 5321 §3.8: 421 when the service is not available to this client now.
            log.warning(logfmt("connection-refused", listener=listener.name,
                               client=self.client_ip, reason="connection-limit"))  # fmt: skip
            transport.write(TOO_MANY.to_bytes())
            self._shut()
            return
        listener.enter(self, self.client_ip)
        log.info(f"{CONNECT} session={logvalue(self.session_id)} listener={listener.log_name}"
                 f" client={logvalue(self.client_ip)} port={self.client_port}"
                 f" tls={self.conn.tls_active}")  # fmt: skip
        self._arm_timer()
        throttle = self.ctx.throttle
        if throttle is not None and throttle.blocked(self.client_ip):
            log.warning(logfmt("connection-refused", listener=listener.name,
                               client=self.client_ip, reason="auth-blocked"))  # fmt: skip
            self.conn.greet(AUTH_BLOCKED)
            self._process()
            return
        if screens(self.ctx):
            # OP25B rules and the mx [screen] may need DNS (and a wait) before the greeting;
            # an early talker must be heard meanwhile (server/screen.py).
            self._begin(self._before_greeting(), name="greeting")
            if self.ctx.screen is not None and self.ctx.screen.pregreet:
                transport.resume_reading()
            return
        self.conn.greet()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.ctx.screen is not None and self.task and self.task.get_name() == "greeting":
            self._close_with(self.ctx.screen.early_talker(self.client_ip, self.session_id))
            return
        self.last_activity = self.ctx.clock.monotonic()
        self.conn.receive_data(data)
        self._process()
        self.burst += len(data)
        if self.burst >= BURST and not self.busy and not self.closing and self.transport:
            self.transport.pause_reading()
            self._loop().call_soon(self._resume_after_burst)

    def _resume_after_burst(self) -> None:
        self.burst = 0
        if self.may_read() and self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if not self.closing and not self.busy:
            self.conn.receive_data(b"")
            self._process()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if self.linger is not None:
            self.linger.cancel()  # closed in time: the handle would keep the session for 2 s
            self.linger = None
        if self.task is not None and self.task.get_name() != "commit":
            self.task.cancel()  # a handshake or a password check; a commit runs to its end
        self._discard_body()
        self._reset_transaction()
        self.ctx.listener.leave(self, self.client_ip)
        line = (f"{DISCONNECT} session={logvalue(self.session_id)}"
                f" client={logvalue(self.client_ip)} messages={self.messages}")  # fmt: skip
        log.info(line if exc is None else f"{line} error={logvalue(exc)}")

    # ---- the event pump ----

    def _process(self) -> None:
        # One step: the user and key databases' stamps are read once for all its commands
        # (model/moment.py; a change made before these octets were read is seen).
        opened = moment.begin()
        try:
            while not self.closing and not self.busy:
                event = self.conn.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                self._handle(event)
        except Exception:
            # STYLE.md: the one catch-all at the top of a session: answer 421, log, close.
            log.exception(logfmt("session-error", session=self.session_id))
            self._close_with(INTERNAL_ERROR)
            return
        finally:
            if opened:
                moment.end()
        self._flush()

    def _handle(self, event: object) -> None:
        # The commonest events first (issue 15: each case is a type test, per event).
        match event:
            case BodyChunk(data=data):
                if self.incoming is not None:
                    data = self.incoming.feed(data)  # the signer reads what is stored
                if self.capture is not None:
                    self.capture.feed(data)
            case RcptTo():
                self._on_rcpt(event)
            case MailFrom():
                self._on_mail(event)
            case DataStart():
                keyed = self.tx is not None and self.tx.keyed
                self.incoming = Incoming(
                    self.ctx,
                    keyed=keyed,
                    authserv_id=self.ctx.authserv_id,
                    missing=self._missing_fields(),
                )
                self.capture = open_capture(self.ctx, self._door())
            case MessageEnd():
                self._on_message_end()
            case Hello():
                self.conn.accept()
            case MessageAborted(reply=reply):
                self.ctx.metrics.message(reply.code)
                log.info(logfmt("message-refused", session=self.session_id, reply=reply))
                self._discard_body()
                self._reset_transaction()
            case TransactionReset():
                self._discard_body()
                self._reset_transaction()
            case ProtocolError(reply=reply, detail=detail):
                if self.login.active:  # a garbled AUTH response ends the exchange (501)
                    self._begin(self._auth_abandoned("bad response"))
                log.info(logfmt("protocol-error", session=self.session_id,
                                client=self.client_ip, reply=reply.code,
                                detail=detail))  # fmt: skip
            case CloseConnection() | ConnectionLost():
                self._discard_body()
                self._give_back()
                self._flush()
                self._shut()
            case StartTLSRequest():
                self._on_starttls()
            case AuthRequest(mechanism=mechanism, initial=initial):
                self._begin(self._auth_step(self.login.start(self.conn, mechanism, initial)))
            case AuthResponse(data=data):
                self._begin(self._auth_step(self.login.respond(self.conn, data)))
            case AuthCancelled():
                self._begin(self._auth_abandoned("cancelled"))
            case _:
                raise AssertionError(f"unhandled SMTP event {event!r}")

    def _begin(self, work: Coroutine[Any, Any, None], name: str = "work") -> None:
        """Run one decision that needs I/O; reading pauses until it has answered."""
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.task = self._loop().create_task(self._guard(work), name=name)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(logfmt("session-error", session=self.session_id))
            self._close_with(INTERNAL_ERROR)
        finally:
            self.busy = False
            self.task = None
        if self.closing:
            return
        if self.transport is not None and not self.writes_paused:
            self.transport.resume_reading()
        self._process()
        if self.draining and self.incoming is None and not self.closing:
            self._close_with(SHUTTING_DOWN)

    async def _before_greeting(self) -> None:
        reply = await before_greeting(self.ctx, self.client_ip, self.session_id, self._write)
        if isinstance(reply, Screened):
            self.screened, reply = reply, None
        # RFC 5321 §3.1: a 554 greeting; the core then answers 503 to all but QUIT. A 4xx
        # greeting (421) closes at once.
        self.conn.greet(reply)

    # ---- STARTTLS (RFC 3207) ----

    def _on_starttls(self) -> None:
        if self.ctx.tls is None or self.transport is None:
            self.conn.reply(NO_TLS)
            return
        # The core discards anything pipelined after STARTTLS (RFC 3207 §4.2, CVE-2011-0411).
        self.conn.accept()
        self._flush()
        self._begin(self._handshake(self.transport), name="tls")

    async def _handshake(self, transport: asyncio.Transport) -> None:
        assert self.ctx.tls is not None
        loop = self._loop()
        try:
            new = await loop.start_tls(
                transport,
                self,
                self.ctx.tls.current,
                server_side=True,
                ssl_handshake_timeout=self.ctx.tls_handshake_timeout,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.info(
                logfmt("tls-failed", session=self.session_id, client=self.client_ip, error=exc)
            )
            self.closing = True
            transport.abort()
            return
        if new is None:
            self.closing = True
            return
        self.transport = new
        self.writes_paused = False  # the plain transport's; the TLS one tells its own
        self._note_tls(new)
        self.conn.tls_established()  # RFC 3207 §4.2: forget everything, EHLO again
        self.user = None
        log.info(logfmt("tls", session=self.session_id, detail=self.tls_detail))

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.ctx.metrics.tls_handshake(ssl_object.version())
            cipher = ssl_object.cipher()
            self.tls_detail = (
                f"using {ssl_object.version()} with cipher {cipher[0] if cipher else '?'}"
            )

    # ---- AUTH (RFC 4954) ----

    async def _auth_step(self, step: Coroutine[Any, Any, Address | None]) -> None:
        user = await step
        if user is not None:
            self.user = user

    async def _auth_abandoned(self, reason: str) -> None:
        close = await self.login.abandoned(reason)
        if close is not None:
            self._close_with(close)

    # ---- helpers ----

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _write(self, data: bytes) -> bool:
        """Write `data` unless the session is closing; whether it is still open."""
        if self.closing or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def _close_with(self, reply: Reply) -> None:
        if self.closing or self.transport is None:
            return
        self._give_back()
        self._flush()
        self.transport.write(reply.to_bytes())
        self._shut()

    def _give_back(self) -> None:
        """The session ends: no more timeouts, and its place in the listener's counts (the
        per-IP table every worker shares) is given back. Before the last reply is written: a
        client that reads it and connects again at once must find its place free, whichever
        worker accepts it."""
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ctx.listener.leave(self, self.client_ip)

    def _shut(self) -> None:
        """Close now: the client's place in the listener's counts is given back at once (a
        closed session holds no per-IP slot, nor a graceful stop), and what is left of the close
        (the last bytes, TLS close_notify) gets CLOSE_GRACE before the connection is aborted."""
        self._give_back()
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if self.linger is None and self._lingers(transport):
            self.linger = self._loop().call_later(CLOSE_GRACE, transport.abort)

    def _lingers(self, transport: asyncio.Transport) -> bool:
        """Whether the close just asked of `transport` may last: over TLS (its close_notify),
        during a STARTTLS handshake, or with bytes still to send. A plain TCP transport with
        nothing to send closes at once (the socket is closed, `connection_lost` comes next
        turn), so it needs no abort timer (issue 15: a timer made and cancelled per connection)."""
        return (
            self.conn.tls_active
            or self.ctx.implicit_tls
            or self.busy
            or transport.get_write_buffer_size() > 0
        )

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.loop if self.loop is not None else asyncio.get_running_loop()

    # ---- timeouts (RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command) ----

    def _arm_timer(self) -> None:
        now = self.ctx.clock.monotonic()
        due = min(
            self.last_activity + self.ctx.idle_timeout, self.started + self.ctx.session_timeout
        )
        self.timer = self._loop().call_later(max(0.05, due - now), self._on_timer)

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
        if self.busy or self.incoming is not None:
            return
        self._close_with(SHUTTING_DOWN)
