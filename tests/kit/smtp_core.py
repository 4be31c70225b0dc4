"""The one driver of the sans-IO SMTP core (hato.smtp.ServerConnection) in tests: feeds bytes,
answers every decision with a test app (recipients @example.org accepted, others 550 5.1.1;
STARTTLS accepted and the handshake taken as done; PLAIN/LOGIN for alice:secret), collects the
events and the bytes the server sent. Unit tests (tests/unit/smtp), the scripted dialogs
(tests/dialogs) and the property tests (tests/property) all drive the core through it; a test
that needs another app passes `decide`.

    driver = Driver.make(max_recipients=3)         # greeted; ServerSettings fields as keywords
    out = driver.run("EHLO c.example\r\n")          # what the server answered, as text
    assert codes(out) == [250]
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hato.model import Reply
from hato.smtp import (
    AuthRequest,
    AuthResponse,
    BodyChunk,
    CloseConnection,
    ConnectionLost,
    Event,
    Hello,
    MailFrom,
    MessageEnd,
    RcptTo,
    Sentinel,
    ServerConnection,
    ServerSettings,
    StartTLSRequest,
)

REFUSED_RCPT = Reply(550, "5.1.1", "No such user")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
T = TypeVar("T")


@dataclass
class Driver:
    conn: ServerConnection
    events: list[Event] = field(default_factory=list)
    auto_tls: bool = True  # call tls_established() right after accepting STARTTLS
    # override the test app: return a Reply to refuse, a str to accept with that text,
    # or None for the default behaviour
    decide: Callable[[Event], Reply | str | None] = lambda event: None
    _login_user: bytes | None = None
    _stage: str = ""

    @classmethod
    def make(
        cls,
        *,
        greet: bool = True,
        tls_active: bool = False,
        decide: Callable[[Event], Reply | str | None] | None = None,
        **settings: Any,
    ) -> Driver:
        """A connection with `settings` (hostname mx.example.org unless given); with `greet`,
        the 220 greeting is sent and left out of what `run` returns."""
        options: dict[str, Any] = {"hostname": "mx.example.org", **settings}
        conn = ServerConnection(ServerSettings(**options), tls_active=tls_active)
        driver = cls(conn) if decide is None else cls(conn, decide=decide)
        if greet:
            conn.greet()
            conn.data_to_send()
        return driver

    @property
    def closed(self) -> bool:
        return any(isinstance(e, CloseConnection | ConnectionLost) for e in self.events)

    def run(self, data: bytes | str) -> str:
        """Feed `data` in one read, answer every decision, return what the server sent."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if data:  # b"" would be EOF: use eof() for that
            self.conn.receive_data(data)
        self.pump()
        return self.conn.data_to_send().decode("utf-8")

    def eof(self) -> str:
        self.conn.receive_data(b"")
        self.pump()
        return self.conn.data_to_send().decode("utf-8")

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Sentinel):
                # NEED_DATA; or PAUSED when STARTTLS waits for the handshake (auto_tls off)
                return
            self.events.append(event)
            self._answer(event)
            if isinstance(event, CloseConnection | ConnectionLost):
                return

    def _answer(self, event: Event) -> None:
        if not isinstance(
            event,
            Hello | MailFrom | RcptTo | MessageEnd | StartTLSRequest | AuthRequest | AuthResponse,
        ):
            return
        custom = self.decide(event)
        if isinstance(custom, Reply):
            self.conn.reply(custom)
            return
        if isinstance(custom, str):
            self.conn.accept(custom)
            return
        match event:
            case RcptTo() if event.address.domain != "example.org":
                self.conn.reply(REFUSED_RCPT)
            case AuthRequest() | AuthResponse():
                self._auth(event)
            case StartTLSRequest():
                self.conn.accept()
                if self.auto_tls:
                    self.conn.tls_established()
            case _:
                self.conn.accept()

    def _auth(self, event: AuthRequest | AuthResponse) -> None:
        if isinstance(event, AuthRequest):
            self._stage = event.mechanism
            self._login_user = None
            if event.mechanism == "LOGIN":
                self.conn.auth_challenge(b"Username:")
                return
            if event.initial is None:
                self.conn.auth_challenge(b"")
                return
            data = event.initial
        elif self._stage == "LOGIN" and self._login_user is None:
            self._login_user = event.data
            self.conn.auth_challenge(b"Password:")
            return
        else:
            data = event.data
        if self._stage == "LOGIN":
            ok = self._login_user == b"alice" and data == b"secret"
        else:
            ok = data == b"\0alice\0secret"
        if ok:
            self.conn.accept()
        else:
            self.conn.reply(AUTH_FAILED)

    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, BodyChunk))

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]


def replies(output: str) -> list[str]:
    """The last line of every reply in `output`, e.g. ["250 2.1.0 Ok", "354 End data..."]."""
    return [line for line in output.split("\r\n") if line and line[3:4] != "-"]


def codes(output: str) -> list[int]:
    return [int(line[:3]) for line in replies(output)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


EHLO = "EHLO client.example.com\r\n"
TXN = "MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n"
