"""The cost of the rspamd check per message: a private rspamd (the tests' configuration:
Debian's rules, no network modules) asked about a 10 KB message through Hato's own client
(`hato.filters.RspamdClient`, the message streamed as the server streams it), one at a time
and with several in flight. Reports the wall time per check (what a session waits before its
250) and Hato's own CPU per check (the client side: request, streaming, JSON); rspamd's CPU is
its own processes'. Run: .venv/bin/python benchmarks/rspamd_bench.py [--messages 500]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from peers.rspamd import RspamdServer

from hato.filters import Envelope, RspamdClient, chunks_of

HEADERS = (
    b"From: Joe <joe@example.com>\r\nTo: Sue <sue@example.net>\r\nSubject: benchmark\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <bench-%d@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
)
BODY = (b"The quick brown fox jumps over the lazy dog, again and again.  \r\n" * 160)[:10_240]
ENVELOPE = Envelope(
    mail_from="<joe@example.com>",
    recipients=("<sue@example.net>",),
    # Loopback: rspamd skips its per-client DNS checks (the private instance has no DNS; with
    # a real resolver they add the resolver's latency, not CPU).
    client_ip="127.0.0.1",
    helo="mx.example.com",
)


async def run(url: str, messages: int, in_flight: int) -> tuple[float, float]:
    """(wall ms per message, Hato CPU ms per message)."""
    client = RspamdClient(url, timeout=30)
    slots = asyncio.Semaphore(in_flight)

    async def one(number: int) -> None:
        data = HEADERS % number + BODY
        async with slots:
            await client.check(ENVELOPE, len(data), chunks_of(data))

    await one(-1)  # warm up: connection, rspamd's caches
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(messages)))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    await client.aclose()
    return wall / messages * 1000, cpu / messages * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hato-rspamd-bench-") as work:
        rspamd = RspamdServer(Path(work))
        rspamd.start()
        try:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            for in_flight in (1, 8):
                wall, cpu = asyncio.run(run(rspamd.url, args.messages, in_flight))
                print(
                    f"{in_flight} in flight: {wall:.2f} ms wall per message "
                    f"({1000 / wall:.0f} messages/s), Hato CPU {cpu:.3f} ms per message"
                )
        finally:
            rspamd.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        print(f"rspamd CPU (all its processes, start-up included): {used:.1f} s")


if __name__ == "__main__":
    main()
