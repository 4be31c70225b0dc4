"""The sans-IO SMTP/LMTP client core: commands out as bytes, replies in as `Answer`s.

Theory of operation
-------------------
The driver calls a method per command (hello(), mail(), rcpt(), data(), body(), ...); each
returns the bytes to write and records which reply it expects. Socket bytes go in with
receive_data(); next_answer() hands out the replies, one at a time, each paired with the
command it answers (RFC 2920 §3.1: replies come in command order, so a FIFO pairs them).
Several commands may be written before reading (PIPELINING): the sending state moves on at
once; a negative reply moves it back (e.g. a refused MAIL makes the pipelined DATA fail).

What may be sent in each state is the one table ALLOWED below; anything else is our own
misuse and raises LocalProtocolError. Anything malformed or unexpected from the peer raises
RemoteProtocolError. LMTP (RFC 2033) differs in two places only: LHLO instead of EHLO, and
after the body one reply per accepted recipient, in RCPT order (RFC 2033 §4.2).

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from hato.model import Address, Reply, ReversePath
from hato.smtp.client_body import BdatFramer, DotStuffer
from hato.smtp.client_commands import (
    CommandError,
    SaslClient,
    decode_challenge,
    hello_command,
    mail_command,
    rcpt_command,
    simple_command,
)
from hato.smtp.client_ehlo import Capabilities, parse_ehlo
from hato.smtp.client_replies import RemoteProtocolError, ReplyParser
from hato.smtp.states import LocalProtocolError

__all__ = [
    "ALLOWED",
    "Answer",
    "Capabilities",
    "ClientConnection",
    "ClientState",
    "ClientVerb",
    "CommandError",
    "Expect",
    "LocalProtocolError",
    "RemoteProtocolError",
]


class ClientState(enum.Enum):
    GREETING = "greeting"  # connected, waiting for the 220 banner
    REJECTED = "rejected"  # RFC 5321 §3.1: a 554 banner; only QUIT makes sense
    CONNECTED = "connected"  # greeted (or TLS just started): EHLO/LHLO needed
    HELLO_SENT = "hello-sent"
    READY = "ready"  # no mail transaction
    STARTTLS_SENT = "starttls-sent"
    TLS_HANDSHAKE = "tls-handshake"  # 220 to STARTTLS: run the handshake, tls_established()
    AUTH_SENT = "auth-sent"
    AUTH_CHALLENGE = "auth-challenge"  # a 334 came: send the next SASL response
    MAIL = "mail"  # MAIL sent: RCPT, DATA or BDAT next (pipelined or not)
    DATA_SENT = "data-sent"  # waiting for 354
    DATA = "data"  # 354 came: body chunks, then end_body()
    BDAT = "bdat"  # between BDAT chunks
    MESSAGE_SENT = "message-sent"  # the end of the body was sent: waiting for its reply(s)
    RSET_SENT = "rset-sent"
    QUIT_SENT = "quit-sent"
    CLOSED = "closed"


class ClientVerb(enum.Enum):
    HELLO = "EHLO/LHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH response"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BODY = "body"
    BDAT = "BDAT"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class Expect(enum.Enum):
    """What a reply answers."""

    GREETING = "greeting"
    HELLO = "hello"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the 354 (or refusal) to DATA
    BDAT = "bdat"  # a non-LAST BDAT chunk
    MESSAGE = "message"  # the final reply after the body (one per recipient under LMTP)
    RSET = "rset"
    NOOP = "noop"
    QUIT = "quit"


_V = ClientVerb
# The state table: what we may send in each state. Not listed: nothing may be sent.
# RFC 5321 §4.1.4: MAIL only after EHLO/HELO and outside a transaction; RCPT after MAIL;
# RFC 2920 §3.1: RCPT and DATA may follow MAIL unanswered; RFC 3030 §2: BDAT and DATA
# don't mix; RFC 3207 §4.2 and RFC 4954 §4: STARTTLS and AUTH only outside a transaction.
ALLOWED: dict[ClientState, frozenset[ClientVerb]] = {
    ClientState.GREETING: frozenset({_V.QUIT}),
    ClientState.REJECTED: frozenset({_V.QUIT}),
    ClientState.CONNECTED: frozenset({_V.HELLO, _V.HELO, _V.QUIT}),
    ClientState.READY: frozenset(
        {_V.HELLO, _V.HELO, _V.STARTTLS, _V.AUTH, _V.MAIL, _V.RSET, _V.NOOP, _V.QUIT}
    ),
    ClientState.AUTH_CHALLENGE: frozenset({_V.AUTH_RESPONSE}),
    ClientState.MAIL: frozenset({_V.RCPT, _V.DATA, _V.BDAT, _V.RSET, _V.QUIT}),
    ClientState.DATA: frozenset({_V.BODY}),
    ClientState.BDAT: frozenset({_V.BDAT, _V.RSET, _V.QUIT}),
    # RFC 2920 §3.1: RSET is not among the commands that must end a group, so a reused
    # connection's RSET and the next MAIL may go out together.
    ClientState.RSET_SENT: frozenset({_V.MAIL}),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply and what it answers. `index`: for RCPT, the recipient's position in this
    transaction; for an LMTP MESSAGE reply, the position of the recipient it is about."""

    expect: Expect
    reply: Reply
    index: int = 0


class ClientConnection:
    """One SMTP or LMTP client connection, without I/O. See the module docstring."""

    def __init__(self, *, lmtp: bool = False, tls_active: bool = False) -> None:
        self.lmtp = lmtp
        self.tls_active = tls_active
        self.authenticated = False
        self.capabilities = Capabilities()
        self._state = ClientState.GREETING
        self._parser = ReplyParser()
        self._expected: deque[tuple[Expect, int]] = deque([(Expect.GREETING, 0)])
        self._eof = False
        self._sasl: SaslClient | None = None
        self._challenge = b""
        self._hello_was_extended = True
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self._recipients = 0  # RCPT commands sent in this transaction
        self._rcpt_index = 0  # RCPT replies read in this transaction
        self.accepted: list[int] = []  # indexes of recipients the server accepted
        self.mail_accepted = False
        self._body: DotStuffer | BdatFramer | None = None

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def waiting(self) -> int:
        """How many replies are still owed to us."""
        return len(self._expected)

    @property
    def body_framer(self) -> DotStuffer | BdatFramer | None:
        """The current message's framer (its `size` and `eight_bit` are what was sent)."""
        return self._body

    # ---- input ----
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; b"" means EOF."""
        if not data:
            self._eof = True
            return
        self._parser.feed(data)

    def next_answer(self) -> Answer | None:
        """The next reply with what it answers; None when more bytes are needed.

        Raises RemoteProtocolError for a malformed reply, a reply nobody asked for, or an EOF
        while replies are owed (the connection was dropped).
        """
        reply = self._parser.next_reply()
        if reply is None:
            if self._eof and (self._expected or self._parser.pending):
                self._state = ClientState.CLOSED
                raise RemoteProtocolError("connection closed by the server")
            return None
        if not self._expected:
            raise RemoteProtocolError(f"unexpected reply {reply.code}")
        expect, index = self._expected.popleft()
        self._on_reply(expect, reply)
        if reply.code == 421 and self._state is not ClientState.QUIT_SENT:
            # RFC 5321 §3.8: 421 means the server is closing the channel.
            self._state = ClientState.CLOSED
            self._expected.clear()
        return Answer(expect, reply, index)

    def _on_reply(self, expect: Expect, reply: Reply) -> None:
        ok = reply.is_positive
        match expect:
            case Expect.GREETING:
                # RFC 5321 §3.1: 220 to go on; 554 means no service here.
                self._state = ClientState.CONNECTED if reply.code == 220 else ClientState.REJECTED
            case Expect.HELLO:
                if ok:
                    self._state = ClientState.READY
                    if reply.text and self._hello_was_extended:
                        self.capabilities = parse_ehlo(reply)
                else:
                    self._state = ClientState.CONNECTED
            case Expect.STARTTLS:
                # RFC 3207 §4: 220 to start the handshake; anything else, no TLS.
                self._state = ClientState.TLS_HANDSHAKE if reply.code == 220 else self._ready()
            case Expect.AUTH:
                self._on_auth_reply(reply)
            case Expect.MAIL:
                self.mail_accepted = ok
                if not ok and not self._expected:
                    self._state = ClientState.READY
            case Expect.RCPT:
                if ok:
                    self.accepted.append(self._rcpt_index)
                self._rcpt_index += 1
                if not self.mail_accepted and not self._expected:
                    self._state = self._ready()  # a refused MAIL: no transaction is open
            case Expect.DATA:
                # RFC 5321 §4.1.1.4: 354 starts the body; anything else ends the transaction.
                self._state = ClientState.DATA if reply.code == 354 else self._ready()
            case Expect.BDAT:
                if not ok and self._state is ClientState.BDAT:
                    # RFC 3030 §2: after a failed chunk send no more; RSET.
                    self._state = ClientState.MAIL
            case Expect.MESSAGE | Expect.RSET:
                if not self._expected:
                    self._state = self._ready()
            case Expect.NOOP:
                pass
            case Expect.QUIT:
                self._state = ClientState.CLOSED

    def _ready(self) -> ClientState:
        self._reset_transaction()
        return ClientState.READY

    def _on_auth_reply(self, reply: Reply) -> None:
        if reply.code == 334:
            challenge = decode_challenge(reply.text)
            if challenge is None:
                # RFC 4954 §4: the 334 text is base64; anything else is not SMTP AUTH.
                raise RemoteProtocolError("334 challenge is not base64")
            self._challenge = challenge
            self._state = ClientState.AUTH_CHALLENGE
            return
        self._sasl = None
        self.authenticated = reply.code == 235
        self._state = ClientState.READY

    # ---- output ----
    def _send(self, verb: ClientVerb, data: bytes, *expects: tuple[Expect, int]) -> bytes:
        self._check(verb)
        self._expected.extend(expects)
        return data

    def _check(self, verb: ClientVerb) -> None:
        if verb not in ALLOWED.get(self._state, frozenset()):
            raise LocalProtocolError(f"{verb.value} not allowed in state {self._state.value}")

    def hello(self, name: str) -> bytes:
        """EHLO (LHLO for LMTP, RFC 2033 §4.1)."""
        self._check(ClientVerb.HELLO)
        self._hello_was_extended = True
        data = hello_command("LHLO" if self.lmtp else "EHLO", name)
        self._state = ClientState.HELLO_SENT
        self.capabilities = Capabilities()
        return self._send_unchecked(data, (Expect.HELLO, 0))

    def helo(self, name: str) -> bytes:
        """RFC 5321 §4.1.1.1 / §3.2: HELO, when a server refused EHLO."""
        if self.lmtp:
            raise LocalProtocolError("LMTP has no HELO (RFC 2033 §4.1)")
        self._check(ClientVerb.HELO)
        self._hello_was_extended = False
        self._state = ClientState.HELLO_SENT
        self.capabilities = Capabilities()
        return self._send_unchecked(hello_command("HELO", name), (Expect.HELLO, 0))

    def _send_unchecked(self, data: bytes, *expects: tuple[Expect, int]) -> bytes:
        self._expected.extend(expects)
        return data

    def starttls(self) -> bytes:
        if self.tls_active:
            raise LocalProtocolError("TLS is already active")
        data = self._send(ClientVerb.STARTTLS, simple_command("STARTTLS"), (Expect.STARTTLS, 0))
        self._state = ClientState.STARTTLS_SENT
        return data

    def tls_established(self) -> None:
        """RFC 3207 §4.2: after the handshake, forget what we knew; EHLO again."""
        if self._state is not ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without a 220 to STARTTLS")
        if self._parser.pending:
            # RFC 3207 §4.2 / CVE-2011-0411: bytes sent in clear text before the handshake
            # may have been injected; they must not be read as replies after it.
            raise RemoteProtocolError("data pipelined after the 220 to STARTTLS")
        self.tls_active = True
        self.authenticated = False
        self.capabilities = Capabilities()
        self._state = ClientState.CONNECTED

    def auth(self, mechanism: str, user: str, password: str) -> bytes:
        """RFC 4954 §4: AUTH (PLAIN with an initial response, or LOGIN)."""
        self._check(ClientVerb.AUTH)
        self._sasl = SaslClient(mechanism, user, password)
        data = self._send_unchecked(self._sasl.start(), (Expect.AUTH, 0))
        self._state = ClientState.AUTH_SENT
        return data

    def auth_response(self) -> bytes:
        """The answer to the last 334 challenge."""
        self._check(ClientVerb.AUTH_RESPONSE)
        assert self._sasl is not None
        data = self._send_unchecked(self._sasl.respond(self._challenge), (Expect.AUTH, 0))
        self._state = ClientState.AUTH_SENT
        return data

    def mail(
        self,
        sender: ReversePath,
        *,
        size: int | None = None,
        body: str | None = None,
        smtputf8: bool = False,
        ret: str | None = None,
        envid: str | None = None,
        requiretls: bool = False,
    ) -> bytes:
        """MAIL FROM with its parameters (see client_commands.mail_command)."""
        self._check(ClientVerb.MAIL)
        self._reset_transaction()
        data = mail_command(
            sender,
            size=size,
            body=body,
            smtputf8=smtputf8,
            ret=ret,
            envid=envid,
            requiretls=requiretls,
        )
        self._state = ClientState.MAIL
        return self._send_unchecked(data, (Expect.MAIL, 0))

    def rcpt(
        self,
        recipient: Address,
        *,
        notify: str | None = None,
        orcpt: str | None = None,
        smtputf8: bool = False,
    ) -> bytes:
        self._check(ClientVerb.RCPT)
        data = rcpt_command(recipient, notify=notify, orcpt=orcpt, smtputf8=smtputf8)
        index = self._recipients
        self._recipients += 1
        return self._send_unchecked(data, (Expect.RCPT, index))

    def data(self) -> bytes:
        data = self._send(ClientVerb.DATA, simple_command("DATA"), (Expect.DATA, 0))
        self._state = ClientState.DATA_SENT
        self._body = DotStuffer()
        return data

    def body(self, chunk: bytes) -> bytes:
        """Part of the DATA body, dot-stuffed (RFC 5321 §4.5.2)."""
        self._check(ClientVerb.BODY)
        assert isinstance(self._body, DotStuffer)
        return self._body.feed(chunk)

    def end_body(self) -> bytes:
        """The rest of the body and CRLF.CRLF (RFC 5321 §4.1.1.4)."""
        self._check(ClientVerb.BODY)
        assert isinstance(self._body, DotStuffer)
        data = self._body.finish()
        self._expect_message_end()
        return data

    def bdat(self, chunk: bytes, *, last: bool = False) -> bytes:
        """One BDAT chunk (RFC 3030 §2); b"" when a non-LAST chunk has nothing to send."""
        self._check(ClientVerb.BDAT)
        if self._state is ClientState.MAIL:
            self._body = BdatFramer()
        assert isinstance(self._body, BdatFramer)
        if not last:
            data = self._body.chunk(chunk)
            if data:
                self._expected.append((Expect.BDAT, 0))
            self._state = ClientState.BDAT
            return data
        data = self._body.last(chunk)
        self._expect_message_end()
        return data

    def _expect_message_end(self) -> None:
        if not self.lmtp:
            self._expected.append((Expect.MESSAGE, 0))
        elif any(expect is Expect.RCPT for expect, _ in self._expected):
            raise LocalProtocolError("LMTP: read the RCPT replies before ending the body")
        else:
            # RFC 2033 §4.2: one reply per recipient that got a 250 to RCPT, in RCPT order.
            self._expected.extend((Expect.MESSAGE, index) for index in self.accepted)
        self._state = ClientState.MESSAGE_SENT if self._expected else self._ready()

    def rset(self) -> bytes:
        data = self._send(ClientVerb.RSET, simple_command("RSET"), (Expect.RSET, 0))
        self._state = ClientState.RSET_SENT
        return data

    def noop(self) -> bytes:
        return self._send(ClientVerb.NOOP, simple_command("NOOP"), (Expect.NOOP, 0))

    def quit(self) -> bytes:
        data = self._send(ClientVerb.QUIT, simple_command("QUIT"), (Expect.QUIT, 0))
        self._state = ClientState.QUIT_SENT
        return data
