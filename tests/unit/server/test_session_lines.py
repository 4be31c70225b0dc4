"""The session's connect and disconnect lines, built by hand for speed (issue 15), are exactly
what `logfmt` writes for the same fields: odd listener names, clients and errors included."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from hato.model import Role, SystemClock, logfmt
from hato.server.context import ListenerState, SessionContext, session_ids
from hato.server.session import SmtpSession
from hato.smtp import ServerSettings


class Transport:
    def __init__(self, peer: object) -> None:
        self.peer = peer
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:  # a close that lasts past CLOSE_GRACE
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize(
    ("listener", "peer", "error"),
    [
        ("mx@127.0.0.1:25", ("127.0.0.1", 40000), None),
        ("sub mission", ("::1", 1, 0, 0), ConnectionResetError('reset by "peer"\n')),
        ("x", None, OSError()),
    ],
)
def test_connect_and_disconnect_lines_are_logfmt(
    caplog: pytest.LogCaptureFixture, listener: str, peer: object, error: Exception | None
) -> None:
    none = cast(Any, None)
    ctx = SessionContext(
        role=Role.MX, settings=ServerSettings(hostname="mx.example.org"), queue=none,
        resolver=none, clock=SystemClock(), idle_timeout=300.0, session_timeout=1800.0,
        listener=ListenerState(listener, max_connections=9, max_per_ip=9),
        ids=session_ids(1.0e9, worker=3),
    )  # fmt: skip

    async def scenario() -> SmtpSession:
        session = SmtpSession(ctx)
        session.connection_made(cast(Any, Transport(peer)))
        session.data_received(b"QUIT\r\n")
        session.connection_lost(error)
        return session

    with caplog.at_level(logging.INFO, logger="hato.smtpd"):
        session = asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "hato.smtpd"]
    ip, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("unknown", 0)
    assert lines == [
        logfmt("connect", session=session.session_id, listener=listener, client=ip, port=port,
               tls=False),
        logfmt("disconnect", session=session.session_id, client=ip, messages=0, error=error),
    ]  # fmt: skip
