"""One small handler per SMTP verb, and the helpers they share.

`VerbHandlers` is the base of hato.smtp.server.ServerConnection: it holds the connection's
fields and turns one complete command line into replies and events. The framing and the
public API live in server.py; the state table in states.py.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from hato.model import Reply
from hato.smtp import replies as R
from hato.smtp.commands import (
    VERBS,
    Bad,
    Verb,
    decode_base64,
    parse_auth,
    parse_bdat,
    parse_hello,
    parse_mail,
    parse_rcpt,
)
from hato.smtp.events import (
    AuthCancelled,
    AuthRequest,
    AuthResponse,
    CloseConnection,
    DataStart,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageEnd,
    ProtocolError,
    RcptTo,
    ServerSettings,
    StartTLSRequest,
    TransactionReset,
)
from hato.smtp.framing import BareCounter, DataScanner
from hato.smtp.states import ALLOWED, State

Decision = Hello | MailFrom | RcptTo | MessageEnd | StartTLSRequest | AuthRequest | AuthResponse

# Events without fields, made once (frozen values; issue 15: fewer objects per command).
DATA_START = DataStart(bdat=False)
BDAT_START = DataStart(bdat=True)
TRANSACTION_RESET = TransactionReset()
_NO_VERBS: frozenset[Verb] = frozenset()
# A non-LAST BDAT chunk smaller than this carries too little to be more than overhead: it
# counts as a junk command (RFC 3030 sets no minimum; real clients send kilobytes at least).
SMALL_CHUNK = 1024
# RCPTs past max_recipients answered 452 in one transaction before each further one also counts
# as an error (Postfix's smtpd_recipient_overshoot_limit, 1000 by default too).
RECIPIENT_OVERSHOOT = 1000


class VerbHandlers:
    _settings: ServerSettings
    _state: State
    _tls_active: bool
    _authenticated: bool
    _buf: bytes
    _pos: int
    _skip: int
    _events: deque[Event]
    _decision: Decision | None
    _out: list[bytes]
    _errors: int
    _junk: int  # junk commands since a message was last accepted
    _refused_since_message: int
    # the mail transaction
    _txn_smtputf8: bool
    _accepted: int
    _overshoot: int  # RCPTs answered 452 for being past max_recipients
    _refused: int
    _scanner: DataScanner | None
    _chunk_left: int | None  # octets of the current BDAT chunk still to read
    _chunk_size: int
    _chunk_last: bool
    _bare: BareCounter
    _msg_size: int
    _msg_refusal: Reply | None

    # ---- shared helpers ----
    def _send(self, reply: Reply) -> None:
        self._out.append(R.wire(reply))

    def _decide(self, event: Decision) -> None:
        self._events.append(event)
        self._decision = event

    def _close(self, reply: Reply) -> None:
        self._send(reply)
        self._events.append(CloseConnection(reply))
        self._state = State.CLOSED

    def _error(self, reply: Reply, detail: str) -> None:
        """Answer a protocol error; too many of them end the connection."""
        self._send(reply)
        self._events.append(ProtocolError(reply, detail))
        self._failed()

    def _failed(self) -> None:
        """Count one error (a protocol error, or a sender or message the session refused);
        too many without a message accepted end the connection (Postfix's
        smtpd_hard_error_limit, "errors ... without delivering mail")."""
        self._errors += 1
        if self._errors >= self._settings.max_bad_commands and self._state is not State.CLOSED:
            # RFC 5321 §3.8: the server may close with 421 (here: an abusive client).
            self._events.append(ProtocolError(R.TOO_MANY_ERRORS, "too many protocol errors"))
            self._close(R.TOO_MANY_ERRORS)

    def _too_much_junk(self, verb: Verb) -> bool:
        """Count a command that moves no mail (NOOP, RSET, VRFY, EXPN, HELP, EHLO, HELO, a tiny
        BDAT chunk); past the limit since a message was last accepted, answer 421 4.7.0 and
        close instead (RFC 5321 §3.8; Postfix's smtpd_junk_command_limit): a client repeating
        them forever costs a reply, a log-free CPU turn and often a longer answer each."""
        self._junk += 1
        if self._junk <= self._settings.max_junk_commands:
            return False
        detail = f"{verb.value}: more than {self._settings.max_junk_commands} junk commands"
        self._events.append(ProtocolError(R.TOO_MANY_JUNK, detail))
        self._close(R.TOO_MANY_JUNK)
        return True

    def _refuse(self, bad: Bad) -> None:
        self._error(bad.reply, bad.detail)

    def _reset_message_state(self) -> None:
        self._txn_smtputf8 = False
        self._accepted = 0
        self._overshoot = 0
        self._refused = 0
        self._scanner = None
        self._chunk_left = None
        self._chunk_size = 0
        self._chunk_last = False
        self._msg_size = 0
        self._msg_refusal = None

    def _end_transaction(self) -> None:
        self._reset_message_state()
        self._state = State.READY

    def _reset_transaction(self) -> None:
        """RSET / a new EHLO or HELO: drop the mail transaction, if there is one."""
        if self._state in (State.MAIL, State.RCPT, State.BDAT):
            self._events.append(TRANSACTION_RESET)
            self._end_transaction()

    def auth_allowed(self) -> bool:
        """AUTH is offered: mechanisms exist and we are on TLS (or plain AUTH is allowed)."""
        s = self._settings
        if not s.auth_mechanisms:
            return False
        return self._tls_active or (s.auth_over_plain and not s.require_tls)

    def capabilities(self) -> list[str]:
        """The EHLO keywords (RFC 5321 §4.1.1.1), in the order we advertise them."""
        s = self._settings
        # RFC 1870 §4: SIZE 0 means no fixed maximum.
        caps = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME"]
        if s.smtputf8:
            caps.append("SMTPUTF8")
        caps.append("ENHANCEDSTATUSCODES")
        if s.chunking:
            caps.append("CHUNKING")
        if s.dsn:
            caps.append("DSN")
        if s.offer_starttls and not self._tls_active:
            caps.append("STARTTLS")
        if s.requiretls and self._tls_active:
            # RFC 8689 §4.1 (and §2): REQUIRETLS only where the session itself is on TLS.
            caps.append("REQUIRETLS")
        if self.auth_allowed():
            caps.append("AUTH " + " ".join(s.auth_mechanisms))
        return caps

    # ---- one command line ----
    def _on_command(self, line: bytes) -> None:
        verb_bytes, _, arg_bytes = line.partition(b" ")
        # RFC 5321 §2.4: verbs are case-insensitive (upper-case, as clients send them, first).
        verb = VERBS.get(verb_bytes)
        if verb is None:
            verb = VERBS.get(verb_bytes.upper())
        if self._state is State.REJECTING and verb is not Verb.QUIT:
            # RFC 5321 §3.1: after a 554 greeting, 503 to everything but QUIT.
            self._error(R.REJECTING, "command in reject mode")
            return
        if verb is None:
            # RFC 5321 §4.2.4: 500 for an unrecognized command.
            self._error(R.UNKNOWN_COMMAND, f"unknown command {verb_bytes[:16]!r}")
            return
        if verb not in ALLOWED.get(self._state, _NO_VERBS):
            self._bad_sequence(verb, arg_bytes)
            return
        try:
            arg = arg_bytes.decode("utf-8").rstrip(" ")
        except UnicodeDecodeError:
            self._error(R.BAD_SYNTAX, f"{verb.value} argument is not UTF-8")
            return
        _HANDLERS[verb](self, arg)

    def _bad_sequence(self, verb: Verb, arg: bytes) -> None:
        if verb is Verb.BDAT:
            # RFC 3030 §2: keep the framing: the refused chunk's octets are skipped.
            bdat = parse_bdat(arg.decode("ascii", "replace").rstrip(" "))
            if bdat is None:
                self._bad_bdat_size()
                return
            self._skip = bdat.size
        self._error(R.BAD_SEQUENCE, f"{verb.value} not allowed in state {self._state.value}")

    def _bad_bdat_size(self) -> None:
        # RFC 3030 §2: without a valid size, the chunk framing is lost: close.
        self._events.append(ProtocolError(R.BAD_ARGUMENTS, "BDAT without a valid size"))
        self._close(R.BAD_ARGUMENTS)

    def _no_arguments(self, verb: Verb, arg: str) -> bool:
        """True (after answering 501) when a verb that takes no argument got one."""
        if arg:
            self._error(R.BAD_ARGUMENTS, f"{verb.value} takes no argument")
        return bool(arg)

    # ---- the verbs ----
    def _on_ehlo(self, arg: str) -> None:
        if not self._too_much_junk(Verb.EHLO):
            self._hello("EHLO", arg)

    def _on_helo(self, arg: str) -> None:
        if not self._too_much_junk(Verb.HELO):
            self._hello("HELO", arg)

    def _hello(self, kind: Literal["EHLO", "HELO"], arg: str) -> None:
        name = parse_hello(arg)
        if isinstance(name, Bad):
            self._refuse(name)
            return
        # RFC 5321 §4.1.4: EHLO/HELO in a transaction resets it, as RSET does.
        self._reset_transaction()
        self._decide(Hello(kind, name))

    def _on_mail(self, arg: str) -> None:
        s = self._settings
        if s.require_tls and not self._tls_active:
            # RFC 3207 §4: a server requiring TLS answers 530 until STARTTLS.
            self._error(R.NEED_STARTTLS, "MAIL before STARTTLS")
            return
        if s.require_auth and not self._authenticated:
            # RFC 4954 §6: 530 5.7.0 when authentication is required.
            self._error(R.NEED_AUTH, "MAIL before AUTH")
            return
        mail = parse_mail(arg, s, auth_offered=self.auth_allowed(), tls_active=self._tls_active)
        if isinstance(mail, Bad):
            self._refuse(mail)
        else:
            self._decide(mail)

    def _on_rcpt(self, arg: str) -> None:
        rcpt = parse_rcpt(arg, self._settings, smtputf8=self._txn_smtputf8)
        if isinstance(rcpt, Bad):
            self._refuse(rcpt)
        elif self._accepted >= self._settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 for recipients past our limit; the client
            # sends them again in a later transaction. Not a protocol error, up to a point:
            # a client that goes on forever gets each one counted as one.
            self._send(R.TOO_MANY_RECIPIENTS)
            self._overshoot += 1
            if self._overshoot > RECIPIENT_OVERSHOOT:
                self._events.append(ProtocolError(R.TOO_MANY_RECIPIENTS, "recipient overshoot"))
                self._failed()
        else:
            self._decide(rcpt)

    def _no_recipients(self, verb: Verb) -> None:
        # RFC 2920 §3.1: after pipelined RCPTs that were all refused, DATA gets 554.
        if self._refused:
            self._error(R.NO_VALID_RECIPIENTS, f"{verb.value} after all recipients were refused")
        else:
            self._error(R.BAD_SEQUENCE, f"{verb.value} without RCPT")

    def _on_data(self, arg: str) -> None:
        if self._no_arguments(Verb.DATA, arg):
            return
        if self._state is State.MAIL:
            self._no_recipients(Verb.DATA)
            return
        # RFC 5321 §4.1.1.4: 354, then the body up to CRLF.CRLF.
        self._send(R.START_DATA)
        self._state = State.DATA
        self._scanner = DataScanner(self._settings.max_text_line, self._settings.max_message_size)
        self._events.append(DATA_START)

    def _on_bdat(self, arg: str) -> None:
        bdat = parse_bdat(arg)
        if bdat is None:
            self._bad_bdat_size()
            return
        if not self._settings.chunking:
            self._skip = bdat.size  # keep the framing even though BDAT is not offered
            self._error(R.NOT_IMPLEMENTED, "BDAT while CHUNKING is off")
            return
        if self._state is State.MAIL:
            self._skip = bdat.size
            self._no_recipients(Verb.BDAT)
            return
        if not bdat.last and bdat.size < SMALL_CHUNK and self._too_much_junk(Verb.BDAT):
            return  # closed: the framing no longer matters
        if self._state is State.RCPT:
            self._state = State.BDAT
            self._bare = BareCounter()  # the new message's (read only in State.BDAT)
            self._events.append(BDAT_START)
        self._chunk_left = self._chunk_size = bdat.size
        self._chunk_last = bdat.last

    def _on_rset(self, arg: str) -> None:
        if self._no_arguments(Verb.RSET, arg) or self._too_much_junk(Verb.RSET):
            return
        # RFC 5321 §4.1.1.5: RSET drops the transaction and answers 250.
        self._send(R.OK)
        if self._state is State.BDAT:
            self._events.append(MessageAborted(R.OK))
        self._reset_transaction()

    def _on_noop(self, arg: str) -> None:
        # RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        if not self._too_much_junk(Verb.NOOP):
            self._send(R.OK)

    def _on_quit(self, arg: str) -> None:
        if not self._no_arguments(Verb.QUIT, arg):
            # RFC 5321 §4.1.1.10: 221, then close.
            self._close(R.BYE)

    def _on_vrfy(self, arg: str) -> None:
        if self._too_much_junk(Verb.VRFY):
            return
        if not arg:
            self._error(R.BAD_ARGUMENTS, "VRFY without argument")
        else:
            self._send(R.VRFY_REPLY)

    def _on_expn(self, arg: str) -> None:
        if not arg:
            # RFC 5321 §4.1.1.7: "EXPN" SP String CRLF; without its string, 501.
            self._error(R.BAD_ARGUMENTS, "EXPN without argument")
        elif not self._too_much_junk(Verb.EXPN):
            self._send(R.EXPN_REPLY)

    def _on_help(self, arg: str) -> None:
        if not self._too_much_junk(Verb.HELP):
            self._send(R.HELP_REPLY)

    def _on_starttls(self, arg: str) -> None:
        if self._no_arguments(Verb.STARTTLS, arg):  # RFC 3207 §4: 501 for parameters
            return
        if self._tls_active:
            self._error(R.TLS_ALREADY_ACTIVE, "STARTTLS on TLS")
        elif not self._settings.offer_starttls:
            self._error(R.NOT_IMPLEMENTED, "STARTTLS not offered")
        else:
            self._decide(StartTLSRequest())

    def _on_auth(self, arg: str) -> None:
        s = self._settings
        if self._authenticated:
            # RFC 4954 §4: after a successful AUTH, further AUTH commands get 503.
            self._error(R.ALREADY_AUTHENTICATED, "AUTH after successful AUTH")
        elif not self.auth_allowed():
            tls_would_help = s.auth_mechanisms and (s.offer_starttls or s.require_tls)
            if tls_would_help and not self._tls_active:
                # RFC 3207 §4 / RFC 4954 §4: AUTH only after STARTTLS here.
                self._error(R.NEED_STARTTLS, "AUTH before STARTTLS")
            else:
                self._error(R.NOT_IMPLEMENTED, "AUTH not offered")
        else:
            auth = parse_auth(arg, s.auth_mechanisms)
            if isinstance(auth, Bad):
                self._refuse(auth)
            else:
                self._decide(AuthRequest(auth.mechanism, auth.initial))

    def _on_auth_line(self, line: bytes) -> None:
        """A SASL response after a 334 (RFC 4954 §4)."""
        if line == b"*":
            # RFC 4954 §4: "*" cancels the exchange; 501.
            self._state = State.READY
            self._send(R.AUTH_CANCELLED)
            self._events.append(AuthCancelled())
            return
        data = b"" if line == b"=" else decode_base64(line)
        if data is None:
            # RFC 4954 §4: a response that is not base64 fails the AUTH with 501.
            self._state = State.READY
            self._error(R.AUTH_BAD_BASE64, "AUTH response is not valid base64")
        else:
            self._decide(AuthResponse(data))


_HANDLERS: dict[Verb, Callable[[VerbHandlers, str], None]] = {
    Verb.EHLO: VerbHandlers._on_ehlo,
    Verb.HELO: VerbHandlers._on_helo,
    Verb.MAIL: VerbHandlers._on_mail,
    Verb.RCPT: VerbHandlers._on_rcpt,
    Verb.DATA: VerbHandlers._on_data,
    Verb.BDAT: VerbHandlers._on_bdat,
    Verb.RSET: VerbHandlers._on_rset,
    Verb.NOOP: VerbHandlers._on_noop,
    Verb.QUIT: VerbHandlers._on_quit,
    Verb.VRFY: VerbHandlers._on_vrfy,
    Verb.EXPN: VerbHandlers._on_expn,
    Verb.HELP: VerbHandlers._on_help,
    Verb.STARTTLS: VerbHandlers._on_starttls,
    Verb.AUTH: VerbHandlers._on_auth,
}
