"""Micro benchmark of one message's own cost in a long session, without the sockets.

One `SmtpSession`, built as the server builds it (`boot/runtime.build_rooms` and the mx
listener's `SessionContext`, the default configuration with the inbound checks off, direct
local delivery into a Maildir under a temporary data directory), on a fake transport: EHLO,
then N transactions (MAIL FROM, RCPT TO a local account, DATA, a 10 KiB body, the final dot),
each waited for to its 250, then QUIT. The event loop is uvloop, as the server's. Logging goes
to /dev/null through the server's own log set-up. What it measures is the Python of a message
(issue 15 item 2): the kernel's part of the socket writes is not in it; the Maildir's files,
fsyncs and renames are (the courier's thread), and the loop's wake-ups by that thread.

Prints microseconds per message, best of five: the event loop thread's CPU (`thread_time`:
the session, the intake steps, the commit hand-off) and the whole process's (with the Maildir
thread's file work and fsyncs, noisier). `--profile`: cProfile's top list of the loop thread.
`--pipelined N`: MAIL, N RCPTs (N local accounts) and DATA in one read instead of one command
a read. `--short`: every message in a session of its own (connect, greeting, EHLO, the
transaction, QUIT, close), as smtp-source's default: the difference to the long session is what
a session costs around its message. Not a test: `.venv/bin/python
benchmarks/session_message_bench.py [--profile] [--pipelined N] [--short]`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from hato.boot.build import listener_config
from hato.boot.logsetup import configure_logging
from hato.boot.runtime import Endpoints, build_rooms
from hato.config import parse_settings
from hato.model import Address, Role, SystemClock
from hato.server.clientsetup import Published
from hato.server.context import ListenerState, SessionContext, session_ids
from hato.server.metrics import Metrics
from hato.server.session import SmtpSession

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "1000"))
# --pipelined N: MAIL, N RCPTs and DATA in one read (RFC 2920), as most MTAs send them.
SHORT = "--short" in sys.argv
PIPELINED = int(sys.argv[sys.argv.index("--pipelined") + 1]) if "--pipelined" in sys.argv else 0
RECIPIENTS = ["alice"] + [f"user{n}" for n in range(1, PIPELINED)]
CONFIG = """
[server]
hostname = "mx.example.org"
data_dir = "{data}"

[[listener]]
role = "mx"
address = "127.0.0.1:2525"

[[domain]]
name = "example.org"

[authcheck]
inbound = false
"""
BODY = (
    b"From: Sender <sender@client.example>\r\nTo: <alice@example.org>\r\n"
    b"Subject: a message of 10 KiB\r\nMessage-ID: <m@client.example>\r\n\r\n"
    + (b"x" * 76 + b"\r\n")
    * 130
)


class FakeTransport:
    """What a session calls on its (uvloop) transport; it keeps the replies' last line."""

    def __init__(self) -> None:
        self.closing = False
        self.last = b""
        self.reading = True
        self.waiter: asyncio.Future[None] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.last = data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def context(data: Path) -> tuple[SessionContext, Any]:
    settings = parse_settings(
        CONFIG.format(data=data), base_dir=data, env={}, cwd=data, fqdn=lambda: "h.example"
    )
    clock = SystemClock()
    endpoints = Endpoints(metrics=Metrics(), published=Published())
    rooms = await build_rooms(
        settings, endpoints, clock, cast(Any, None), cast(Any, None), None, None, "bench"
    )
    for name in RECIPIENTS:
        rooms.shared.users.add(Address(name, "example.org"), "a long enough passphrase 1")
    listener = settings.listeners[0]
    config = listener_config(settings, rooms.shared, listener, [])
    ctx = SessionContext(
        role=Role.MX,
        settings=config.settings,
        idle_timeout=config.idle_timeout,
        session_timeout=config.session_timeout,
        queue=rooms.queue,
        resolver=rooms.shared.resolver,
        clock=clock,
        listener=ListenerState("mx@127.0.0.1:2525", max_connections=100, max_per_ip=20),
        limiter=rooms.shared.limiter,
        keys=rooms.keys,
        metrics=rooms.shared.metrics.role(Role.MX),
        direct=rooms.direct,
        ids=session_ids(time.time()),
    )
    ctx.configure(config)
    return ctx, rooms


async def reply_of(session: SmtpSession, transport: FakeTransport, data: bytes) -> bytes:
    """Feed `data`; wait for the session's reply (a commit runs as a task)."""
    transport.last = b""
    transport.waiter = asyncio.get_running_loop().create_future()
    session.data_received(data)
    if not transport.last:  # no spinning: its CPU would count as the session's
        await transport.waiter
    return transport.last


async def messages(ctx: SessionContext, count: int) -> tuple[float, float]:
    """(loop thread CPU, process CPU) in seconds for `count` messages in one session, or
    each in its own with `--short`."""
    if SHORT:
        return await short_sessions(ctx, count)
    transport = FakeTransport()
    session = SmtpSession(ctx)
    session.connection_made(cast(Any, transport))
    await reply_of(session, transport, b"EHLO client.example\r\n")
    thread, process = time.thread_time(), time.process_time()
    envelope = b"MAIL FROM:<sender@client.example>\r\n" + b"".join(
        b"RCPT TO:<%s@example.org>\r\n" % name.encode() for name in RECIPIENTS
    )
    for _ in range(count):
        if PIPELINED:
            replies = await reply_of(session, transport, envelope + b"DATA\r\n")
            assert replies.count(b"250 ") == len(RECIPIENTS) + 1, replies
        else:
            await reply_of(session, transport, b"MAIL FROM:<sender@client.example>\r\n")
            await reply_of(session, transport, b"RCPT TO:<alice@example.org>\r\n")
            await reply_of(session, transport, b"DATA\r\n")
        for start in range(0, len(BODY), 4096):  # a socket's reads
            session.data_received(BODY[start : start + 4096])
        last = await reply_of(session, transport, b".\r\n")
        assert last.startswith(b"250 "), last
    thread, process = time.thread_time() - thread, time.process_time() - process
    await reply_of(session, transport, b"QUIT\r\n")
    session.connection_lost(None)
    return thread, process


async def short_sessions(ctx: SessionContext, count: int) -> tuple[float, float]:
    thread, process = time.thread_time(), time.process_time()
    for _ in range(count):
        transport = FakeTransport()
        session = SmtpSession(ctx)
        session.connection_made(cast(Any, transport))
        await reply_of(session, transport, b"EHLO client.example\r\n")
        await reply_of(session, transport, b"MAIL FROM:<sender@client.example>\r\n")
        await reply_of(session, transport, b"RCPT TO:<alice@example.org>\r\n")
        await reply_of(session, transport, b"DATA\r\n")
        for start in range(0, len(BODY), 4096):
            session.data_received(BODY[start : start + 4096])
        last = await reply_of(session, transport, b".\r\n")
        assert last.startswith(b"250 "), last
        await reply_of(session, transport, b"QUIT\r\n")
        session.connection_lost(None)
    return time.thread_time() - thread, time.process_time() - process


async def main(data: Path, profile: bool) -> None:
    ctx, rooms = await context(data)
    await messages(ctx, 50)  # warm up (and let the database stamps settle)
    await asyncio.sleep(2.1)
    if profile:
        import cProfile
        import pstats

        # The loop thread's CPU, not the wall time (waits for the Maildir thread's fsync).
        with cProfile.Profile(time.thread_time) as prof:
            await messages(ctx, MESSAGES)
        pstats.Stats(prof).sort_stats("tottime").print_stats(45)
    else:
        runs = [await messages(ctx, MESSAGES) for _ in range(5)]
        thread = min(r[0] for r in runs) * 1e6 / MESSAGES
        process = min(r[1] for r in runs) * 1e6 / MESSAGES
        print(
            f"{thread:.1f} us per message on the loop thread, {process:.1f} us the process "
            f"(best of 5 x {MESSAGES}, one session)"
        )
    rooms.maildir.close() if hasattr(rooms.maildir, "close") else None


if __name__ == "__main__":
    configure_logging("text", "info", open(os.devnull, "w"))  # noqa: SIM115
    import uvloop  # the server's loop when installed (boot/supervisor.py), as here

    with tempfile.TemporaryDirectory() as tmp:
        uvloop.run(main(Path(tmp), "--profile" in sys.argv))
