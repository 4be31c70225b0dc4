"""How a session closes (RFC 5321 §3.8, §4.1.1.10): the last reply, then the transport's close,
and an abort CLOSE_GRACE later only when that close may last (over TLS, whose close_notify the
client may never answer, or with bytes the client has not read yet). A plain TCP close with
nothing left to send is immediate, so no abort timer is made for it (issue 15: one per
connection). The session asks for its loop once per connection (in CPython 3.11 each
`asyncio.get_running_loop()` is a getpid(2)), and not at all when its context has it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from hato.model import Role, SystemClock
from hato.server.context import ListenerState, SessionContext
from hato.server.session import CLOSE_GRACE, SmtpSession
from hato.smtp import ServerSettings


class Transport:
    def __init__(self, unsent: int = 0) -> None:
        self.unsent = unsent  # octets the kernel has not taken yet (a client that does not read)
        self.out = b""
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def context(
    implicit_tls: bool = False, loop: asyncio.AbstractEventLoop | None = None
) -> SessionContext:
    none = cast(Any, None)
    return SessionContext(
        role=Role.MX, settings=ServerSettings(hostname="mx.example.org"), queue=none,
        resolver=none, clock=SystemClock(), idle_timeout=300.0, session_timeout=1800.0,
        listener=ListenerState("mx", max_connections=9, max_per_ip=9),
        implicit_tls=implicit_tls, loop=loop,
    )  # fmt: skip


def quit_session(
    transport: Transport, implicit_tls: bool = False, loop: asyncio.AbstractEventLoop | None = None
) -> SmtpSession:
    session = SmtpSession(context(implicit_tls, loop))
    session.connection_made(cast(Any, transport))
    session.data_received(b"EHLO client.example\r\nQUIT\r\n")
    return session


def test_plain_close_with_nothing_unsent_has_no_abort_timer() -> None:
    async def scenario() -> None:
        transport = Transport()
        session = quit_session(transport)
        assert transport.out.endswith(b"221 2.0.0 Bye\r\n")
        assert transport.closed and not transport.aborted
        assert session.linger is None
        assert session.ctx.listener.active == 0  # its place given back at once
        session.connection_lost(None)

    asyncio.run(scenario())


@pytest.mark.parametrize(("unsent", "implicit_tls"), [(1, False), (0, True)])
def test_a_close_that_may_last_is_aborted_after_the_grace(unsent: int, implicit_tls: bool) -> None:
    """Bytes the client has not read, or TLS (its close_notify): the abort comes CLOSE_GRACE
    later unless the connection is lost first."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = Transport(unsent)
        session = quit_session(transport, implicit_tls)
        assert transport.closed and not transport.aborted
        linger = session.linger
        assert linger is not None
        assert 0 < linger.when() - loop.time() <= CLOSE_GRACE
        linger._run()  # the grace has passed
        assert transport.aborted
        other = quit_session(Transport(unsent), implicit_tls)
        assert other.linger is not None
        other.connection_lost(None)  # closed in time: the abort is cancelled
        assert other.linger is None

    asyncio.run(scenario())


def test_a_starttls_session_lingers() -> None:
    async def scenario() -> None:
        transport = Transport()
        session = SmtpSession(context())
        session.connection_made(cast(Any, transport))
        session.conn._tls_active = True  # as after a STARTTLS handshake
        session.data_received(b"QUIT\r\n")
        assert session.linger is not None
        session.connection_lost(None)

    asyncio.run(scenario())


def _quit_counting_loop_questions(
    monkeypatch: pytest.MonkeyPatch, given: bool
) -> tuple[int, asyncio.AbstractEventLoop, SmtpSession]:
    """A session with an idle timer and an abort timer (one unsent octet), its context given
    the loop or not: how often it asked asyncio for its loop, the loop, the session."""
    asked = 0
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        nonlocal asked
        asked += 1
        return real()

    async def scenario() -> tuple[asyncio.AbstractEventLoop, SmtpSession]:
        loop = real()
        monkeypatch.setattr(asyncio, "get_running_loop", counted)
        session = quit_session(Transport(unsent=1), loop=loop if given else None)
        assert session.linger is not None
        session.connection_lost(None)
        return loop, session

    loop, session = asyncio.run(scenario())
    return asked, loop, session


def test_the_loop_is_asked_once_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    asked, loop, session = _quit_counting_loop_questions(monkeypatch, given=False)
    assert asked == 1
    assert session.loop is loop


def test_a_context_that_has_the_loop_spares_the_question(monkeypatch: pytest.MonkeyPatch) -> None:
    """The composition root gives each listener's context its worker's loop (boot/runtime.py):
    a connection then asks asyncio nothing, and its timers run on that loop."""
    asked, loop, session = _quit_counting_loop_questions(monkeypatch, given=True)
    assert asked == 0
    assert session.loop is loop
