"""Micro benchmark of a connection's own cost: accept to close, without the sockets.

Each of N sessions is a `SmtpSession` on a fake transport: `connection_made`, the greeting,
``EHLO``, ``QUIT``, `connection_lost`, with the server's logging (to /dev/null) and metrics.
What it measures is the Python a connection costs beyond its messages (issue 15); the kernel's
part (accept, the TCP handshake, the writes, close) is not in it. Prints microseconds per
connection (best of five). Not a test: `.venv/bin/python benchmarks/session_connect_bench.py`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, cast

from hato.boot.logsetup import configure_logging
from hato.model import Role, SystemClock
from hato.server.context import ListenerState, SessionContext
from hato.server.metrics import Metrics
from hato.server.session import SmtpSession
from hato.smtp import ServerSettings

SESSIONS = 5000


class FakeTransport:
    """What a session calls on its (uvloop) transport."""

    def __init__(self) -> None:
        self.closing = False
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def context() -> SessionContext:
    return SessionContext(
        role=Role.MX,
        settings=ServerSettings(hostname="mx.example.org", offer_starttls=True),
        queue=cast(Any, None),
        resolver=cast(Any, None),
        clock=SystemClock(),
        idle_timeout=300.0,
        session_timeout=1800.0,
        listener=ListenerState("mx@127.0.0.1:25", max_connections=1000, max_per_ip=200),
        metrics=Metrics().role(Role.MX),
    )


def run(ctx: SessionContext, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        transport = FakeTransport()
        session = SmtpSession(ctx)
        session.connection_made(cast(Any, transport))
        session.data_received(b"EHLO client.example.com\r\n")
        session.data_received(b"QUIT\r\n")
        session.connection_lost(None)
    return time.process_time() - start


async def main() -> None:
    ctx = context()
    run(ctx, 200)  # warm up
    best = min(run(ctx, SESSIONS) for _ in range(5))
    print(f"{best * 1e6 / SESSIONS:.1f} us per connection (best of 5 x {SESSIONS})")


if __name__ == "__main__":
    configure_logging("text", "info", open(os.devnull, "w"))  # noqa: SIM115
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        ctx = context()
        with cProfile.Profile() as prof:
            asyncio.run(asyncio.to_thread(lambda: None))
            loop = asyncio.new_event_loop()
            loop.run_until_complete(asyncio.sleep(0))
            asyncio.set_event_loop(loop)

            async def once() -> None:
                run(ctx, 1000)

            loop.run_until_complete(once())
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    else:
        asyncio.run(main())
