"""The sans-IO SMTP server core (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
ENHANCEDSTATUSCODES, CHUNKING, DSN parameters, STARTTLS and AUTH).

Theory of operation
-------------------
The session feeds socket bytes with receive_data() (b"" is EOF) and calls next_event()
until it returns NEED_DATA (read more, then write data_to_send()) or PAUSED (we owe an
answer). Events come out one at a time, in input order:

* A *decision* event (Hello, MailFrom, RcptTo, MessageEnd, StartTLSRequest, AuthRequest,
  AuthResponse) stops parsing until the session answers it with accept(), reply() or
  auth_challenge(); so pipelined commands (RFC 2920) are answered strictly in order.
* Everything else the core answers by itself (syntax and sequence errors, NOOP, RSET,
  the 354 of DATA, ...) and reports with an informational event where the session needs
  to know (ProtocolError, TransactionReset, DataStart, BodyChunk, MessageAborted, ...).
* CloseConnection (our last reply is queued) and ConnectionLost (EOF from the client)
  end the conversation; feeding more raises LocalProtocolError.

Replies accumulate in an output buffer; the session writes data_to_send() once per read.
The verbs each state takes are the one table states.ALLOWED; anything not in it is
503 5.5.1. One handler per verb lives in verbs.py. The input is framed by framing.py:
CRLF-only command lines (a bare CR or LF closes the connection: SMTP smuggling), DATA
bodies scanned a whole read at a time, and BDAT chunks counted exactly. Peer errors never
raise, they become replies; only our own misuse raises LocalProtocolError.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import assert_never

from hato.model import Reply
from hato.smtp import replies as R
from hato.smtp.commands import parameters_allowance
from hato.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    AuthResponse,
    BodyChunk,
    ConnectionLost,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageEnd,
    ProtocolError,
    RcptTo,
    Sentinel,
    ServerSettings,
    StartTLSRequest,
)
from hato.smtp.framing import BareCounter, LineStatus, discard_line, find_line
from hato.smtp.states import LocalProtocolError, State
from hato.smtp.verbs import Decision, VerbHandlers

# The banner and the replies to EHLO/HELO, by listener settings (kept alive here, so their
# id() stays theirs) and TLS state: (settings, bytes).
_BANNERS: dict[int, tuple[ServerSettings, bytes]] = {}
_HELLO_REPLIES: dict[tuple[int, bool, bool], tuple[ServerSettings, bytes]] = {}


def _banner(settings: ServerSettings) -> bytes:
    """The 220 greeting (RFC 2034 §3: no enhanced status code), made once per settings."""
    cached = _BANNERS.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    data = Reply(220, None, f"{settings.hostname} ESMTP Hato").to_bytes()
    if len(_BANNERS) >= 64:  # settings replaced by reloads
        _BANNERS.clear()
    _BANNERS[id(settings)] = (settings, data)
    return data


class ServerConnection(VerbHandlers):
    """One SMTP server connection, without I/O. See the module docstring."""

    def __init__(self, settings: ServerSettings, *, tls_active: bool = False) -> None:
        self._settings = settings
        self._tls_active = tls_active
        self._state = State.INITIAL
        self._authenticated = False
        self._hello_name: str | None = None
        self._esmtp = False
        # buf[pos-2:pos] are always two consumed bytes (see hato.smtp.framing)
        self._buf = b"\r\n"
        self._pos = 2
        self._eof = False
        self._discarding = False  # skipping the rest of an over-long line
        self._skip = 0  # octets of a refused BDAT chunk still to skip
        # Every byte of this read that can be parsed was: a step waits for receive_data().
        self._starved = False
        self._events = deque()
        self._decision = None
        self._out = []
        self._errors = 0
        self._junk = 0
        self._refused_since_message = 0  # RCPTs refused since a message was last accepted
        # RFC 5321 §4.5.3.1.4 / RFC 4954 §4: a line is first looked for within the smaller of
        # the two limits; only a line too long for it needs to know which applies (_step_line).
        self._short_limit = min(settings.max_command_line, settings.max_auth_line)
        self._bare = BareCounter()
        self._reset_message_state()

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def hello_name(self) -> str | None:
        return self._hello_name

    @property
    def esmtp(self) -> bool:
        """True once an EHLO (not HELO) was accepted."""
        return self._esmtp

    # ---- the session's side ----
    def greet(self, reply: Reply | None = None) -> None:
        """Queue the banner: 220 by default; 554 = RFC 5321 §3.1 reject mode; 421 = close."""
        if self._state is not State.INITIAL:
            raise LocalProtocolError("greet() called twice")
        if reply is None:
            self._state = State.GREETED
            self._out.append(_banner(self._settings))
            return
        if reply.code == 220:
            self._state = State.GREETED
            self._send(reply)
        elif reply.code == 554:
            self._state = State.REJECTING
            self._send(reply)
        elif reply.code == 421:
            self._close(reply)
        else:
            raise LocalProtocolError(f"a greeting is 220, 421 or 554, not {reply.code}")

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; b"" means EOF."""
        if self._state is State.CLOSED:
            raise LocalProtocolError("receive_data() after the connection was closed")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if self._state is State.TLS_HANDSHAKE:
            raise LocalProtocolError("receive_data() before tls_established()")
        # Keep two consumed bytes as context (hato.smtp.framing); drop the rest.
        self._buf = self._buf[self._pos - 2 :] + data
        self._pos = 2
        self._starved = False

    def next_event(self) -> Event | Sentinel:
        """The next event; NEED_DATA to read more, PAUSED while we owe an answer."""
        events = self._events
        if events:
            return events.popleft()
        if self._decision is None:
            step = self._step
            while step():
                if events:
                    return events.popleft()
                if self._decision is not None:
                    break
        if events:
            return events.popleft()
        if self._decision is not None or self._state is State.TLS_HANDSHAKE:
            return PAUSED
        if self._eof and self._state is not State.CLOSED:
            self._state = State.CLOSED
            return ConnectionLost()
        return NEED_DATA

    def data_to_send(self) -> bytes:
        """Everything queued for the peer; clears it."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def accept(self, text: str | None = None) -> None:
        """The standard positive answer to the pending decision event."""
        event = self._take_decision()
        match event:
            case Hello():
                self._accept_hello(event, text)
            case MailFrom():
                self._out.append(R.wire_with_text(R.MAIL_OK, text))
                self._state = State.MAIL
                self._txn_smtputf8 = event.smtputf8
            case RcptTo():
                self._out.append(R.wire_with_text(R.RCPT_OK, text))
                self._accepted += 1
                self._state = State.RCPT
            case MessageEnd():
                self._out.append(R.wire_with_text(R.MESSAGE_OK, text))
                self._refused_since_message = self._errors = self._junk = 0
                self._end_transaction()
            case StartTLSRequest():
                self._out.append(R.wire_with_text(R.STARTTLS_READY, text))
                self._start_tls()
            case AuthRequest() | AuthResponse():
                self._out.append(R.wire_with_text(R.AUTH_OK, text))
                self._authenticated = True
                self._state = State.READY
            case _:
                assert_never(event)

    def reply(self, reply: Reply) -> None:
        """Any other (negative) answer to the pending decision event."""
        if reply.code < 400:
            raise LocalProtocolError("use accept() or auth_challenge() for a positive answer")
        event = self._take_decision()
        if reply.code == 421:
            # RFC 5321 §3.8: 421 means the server closes the channel.
            self._close(reply)
            return
        self._send(reply)
        match event:
            case RcptTo():
                self._refused += 1
                self._refused_since_message += 1
                if self._refused_since_message >= self._settings.max_refused_recipients:
                    # RFC 5321 §3.8: the server may close with 421. Each refused RCPT is a
                    # look-up and a log line: a stranger guessing addresses (or flooding the
                    # log) gets this many per connection, not one per line until the session
                    # times out (as Postfix's smtpd_hard_error_limit, "without delivering").
                    detail = "too many refused recipients"
                    self._events.append(ProtocolError(R.TOO_MANY_REFUSED, detail))
                    self._close(R.TOO_MANY_REFUSED)
            case MessageEnd():
                self._end_transaction()
                self._failed()  # a refused message is an error like a refused command
            case MailFrom():
                self._failed()  # so is a refused sender: each is a look-up and a log line
            case AuthRequest() | AuthResponse():
                self._state = State.READY
            case Hello() | StartTLSRequest():
                pass
            case _:
                assert_never(event)

    def auth_challenge(self, data: bytes) -> None:
        """RFC 4954 §4: a 334 continuation carrying base64(data)."""
        if not isinstance(self._decision, AuthRequest | AuthResponse):
            raise LocalProtocolError("auth_challenge() without a pending AUTH event")
        self._take_decision()
        # No enhanced code on a 3xx (RFC 3463 §3.1).
        self._out.append(b"334 " + binascii.b2a_base64(data, newline=False) + b"\r\n")
        self._state = State.AUTH

    def tls_established(self) -> None:
        """RFC 3207 §4.2: after the handshake, forget everything; EHLO is needed again."""
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without an accepted STARTTLS")
        self._tls_active = True
        self._state = State.GREETED
        self._hello_name = None
        self._esmtp = False
        self._authenticated = False

    # ---- answering ----
    def _take_decision(self) -> Decision:
        event = self._decision
        if event is None or self._events:
            raise LocalProtocolError("no decision event is pending")
        self._decision = None
        return event

    def _accept_hello(self, event: Hello, text: str | None) -> None:
        self._out.append(self._hello_reply(event.kind == "EHLO", text))
        self._hello_name = event.domain
        self._esmtp = event.kind == "EHLO"
        if self._state is State.GREETED:
            self._state = State.READY

    def _start_tls(self) -> None:
        # RFC 3207 §4.2 / CVE-2011-0411: bytes pipelined after STARTTLS are discarded
        # unanswered; they came in clear text and may have been injected.
        extra = len(self._buf) - self._pos
        self._buf = b"\r\n"
        self._pos = 2
        self._discarding = False
        self._state = State.TLS_HANDSHAKE
        if extra:
            detail = f"{extra} octets pipelined after STARTTLS discarded"
            self._events.append(ProtocolError(R.STARTTLS_READY, detail))

    def _end_message(self, refusal: Reply | None, size: int) -> None:
        if refusal is None:
            self._decide(MessageEnd(size))
            return
        self._send(refusal)
        self._events.append(MessageAborted(refusal))
        self._end_transaction()

    # ---- input stepping ----
    def _step(self) -> bool:
        """Parse one unit of input; False when nothing more can be done now."""
        if self._starved:
            return False  # issue 15: not the same scan twice (one a read, one an event)
        state = self._state
        if state in (State.INITIAL, State.CLOSED, State.TLS_HANDSHAKE):
            return False
        if self._skip:
            return self._skip_octets()
        if self._discarding:
            return self._discard()
        if state is State.DATA:
            return self._step_data()
        if state is State.BDAT and self._chunk_left is not None:
            return self._step_chunk()
        return self._step_line()

    def _hello_reply(self, ehlo: bool, text: str | None) -> bytes:
        """The 250 to EHLO/HELO; without a text the same bytes for every connection of one
        listener in one TLS state, so they are made once (issue 15: per connection)."""
        key = (id(self._settings), self._tls_active, ehlo) if text is None else None
        if key is not None:
            cached = _HELLO_REPLIES.get(key)
            if cached is not None and cached[0] is self._settings:
                return cached[1]
        host = self._settings.hostname
        first = host if text is None else f"{host} {text}"
        lines = [first, *self.capabilities()] if ehlo else [first]
        # RFC 2034 §3: replies to EHLO/HELO carry no enhanced status code.
        data = Reply(250, None, "\n".join(lines)).to_bytes()
        if key is not None:
            if len(_HELLO_REPLIES) >= 64:  # settings replaced by reloads
                _HELLO_REPLIES.clear()
            _HELLO_REPLIES[key] = (self._settings, data)
        return data

    def _line_limit(self) -> int:
        # RFC 4954 §4: AUTH lines may be up to 12288 octets; others RFC 5321 §4.5.3.1.4,
        # MAIL and RCPT lengthened by the parameters of the extensions we offer.
        head = self._buf[self._pos : self._pos + 5].upper()
        if self._state is State.AUTH or head == b"AUTH ":
            return self._settings.max_auth_line
        return self._settings.max_command_line + parameters_allowance(head)

    def _step_line(self) -> bool:
        found = find_line(self._buf, self._pos, self._short_limit)
        if isinstance(found, int):  # the common case: a whole line within the smaller limit
            self._take_line(found)
            return True
        if found is LineStatus.NEED_MORE:
            self._starved = True
            return False
        limit = self._short_limit
        if found is LineStatus.TOO_LONG:
            # The verdict of a smaller limit stands unless it is "too long" (find_line's
            # window only grows with the limit): then the line's own limit decides.
            limit = self._line_limit()
            if limit != self._short_limit:
                found = find_line(self._buf, self._pos, limit)
        if found is LineStatus.NEED_MORE:
            self._starved = True
            return False
        if found is LineStatus.BARE:
            # RFC 5321 §2.3.8: refuse bare CR/LF and stop parsing (SMTP smuggling).
            self._events.append(ProtocolError(R.BARE_CR_LF, "bare CR or LF in a command line"))
            self._close(R.BARE_CR_LF)
        elif found is LineStatus.TOO_LONG:
            # Skip the rest of the line up to its CRLF, without buffering it.
            self._pos += limit - 1
            self._discarding = True
            if self._state is State.AUTH:
                self._state = State.READY
                self._error(R.AUTH_LINE_TOO_LONG, "AUTH response line too long")
            else:
                self._error(R.LINE_TOO_LONG, f"command line over {limit} octets")
        else:
            self._take_line(found)
        return True

    def _take_line(self, found: int) -> None:
        """The line ending at `found` (its LF), without CRLF, to the AUTH exchange or as a
        command."""
        line = self._buf[self._pos : found - 1]
        self._pos = found + 1
        if self._state is State.AUTH:
            self._on_auth_line(line)
        else:
            self._on_command(line)
        if self._pos == len(self._buf) and self._chunk_left is None:
            # The read ended with this line (no pipelining): nothing is left to parse whatever
            # the answer; only a BDAT chunk (of 0 octets) would go on without input.
            self._starved = True

    def _discard(self) -> bool:
        pos, status = discard_line(self._buf, self._pos)
        if status is LineStatus.BARE:
            self._events.append(ProtocolError(R.BARE_CR_LF, "bare CR or LF in a long line"))
            self._close(R.BARE_CR_LF)
            return True
        progressed = pos != self._pos
        self._pos = pos
        if status is None:
            self._discarding = False
            return True
        return progressed

    def _skip_octets(self) -> bool:
        take = min(self._skip, len(self._buf) - self._pos)
        self._pos += take
        self._skip -= take
        return take > 0

    def _step_data(self) -> bool:
        scanner = self._scanner
        assert scanner is not None
        pos, chunk, ended, bare = scanner.scan(self._buf, self._pos)
        if bare:
            # RFC 5321 §2.3.8 / §4.1.1.4: DATA ends only on CRLF.CRLF; a bare CR or LF
            # could smuggle a second message past another server: refuse, close.
            self._events.append(MessageAborted(R.BARE_CR_LF_IN_DATA))
            self._close(R.BARE_CR_LF_IN_DATA)
            return True
        self._pos = pos
        if chunk is not None:
            self._events.append(BodyChunk(chunk))
        if ended:
            self._end_message(scanner.refusal, scanner.size)
            return True
        # The scan took all this read allows (it stops only before a possible end marker or
        # the CR of a CRLF); another would find nothing new: one scan a read.
        self._starved = True
        return False

    def _step_chunk(self) -> bool:
        left = self._chunk_left
        assert left is not None
        take = min(left, len(self._buf) - self._pos)
        if take:
            piece = self._buf[self._pos : self._pos + take]
            self._pos += take
            left -= take
            self._bare.add(piece)
            self._msg_size += take
            limit = self._settings.max_message_size
            if self._msg_refusal is None and limit and self._msg_size > limit:
                # RFC 3030 §4.2 with RFC 1870: BDAT octets count against SIZE.
                self._msg_refusal = R.MESSAGE_TOO_BIG
            if self._msg_refusal is None:
                self._events.append(BodyChunk(piece))
        self._chunk_left = left
        if left:
            return take > 0
        self._chunk_left = None
        if not self._chunk_last:
            # RFC 3030 §2: each non-LAST chunk gets its own 250.
            self._send(R.chunk_received(self._chunk_size))
            return True
        # We offer 8BITMIME, not BINARYMIME: a bare CR/LF is refused (RFC 5321 §2.3.8).
        refusal = R.BARE_CR_LF_IN_DATA if self._bare.bare else self._msg_refusal
        self._end_message(refusal, self._msg_size)
        return True
