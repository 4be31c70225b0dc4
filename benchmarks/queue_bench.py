"""Queue commit throughput: commits/s and CPU µs per commit at several concurrencies.

Each simulated session streams a body (default 10 KiB, in 4 KiB chunks as the SMTP core
hands them over) into `Queue.new_body()` and awaits `Queue.commit()`: the full durable path
(file fsync, directory fsync, SQLite WAL commit with synchronous=FULL). No runner.

    .venv/bin/python benchmarks/queue_bench.py [--dir /var/tmp] [--seconds 3] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

from hato.model import Address, SystemClock
from hato.queue import Queue

SENDER = Address("bench", "example.com")
RCPTS = [(Address("user", "example.org"), Address("user", "example.org"))]


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def session(
    queue: Queue, body: bytes, chunk: int, deadline: float, counts: list[int]
) -> None:
    while time.monotonic() < deadline:
        writer = queue.new_body()
        for i in range(0, len(body), chunk):
            writer.write(body[i : i + chunk])
        await queue.commit(
            writer, mail_from=SENDER, recipients=RCPTS, prefix=b"Received: x\r\n", params={}
        )
        counts[0] += 1


async def measure(
    root: Path, concurrency: int, seconds: float, size: int, fsync_threads: int
) -> None:
    queue = await Queue.open(
        root, clock=SystemClock(), node_id="bench", fsync_threads=fsync_threads
    )
    body = (b"x" * 76 + b"\r\n") * (size // 78 + 1)
    body = body[:size]
    counts = [0]
    try:
        cpu0, t0 = cpu_seconds(), time.monotonic()
        batches0 = queue.writer.batches
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(session(queue, body, 4096, t0 + seconds, counts))
        elapsed, cpu1 = time.monotonic() - t0, cpu_seconds()
        batches = queue.writer.batches - batches0
    finally:
        await queue.close()
    n = counts[0]
    user, system = (cpu1[0] - cpu0[0]) / n * 1e6, (cpu1[1] - cpu0[1]) / n * 1e6
    print(
        f"concurrency={concurrency:3d} commits={n:6d} commits/s={n / elapsed:7.0f}"
        f" cpu_us/commit={user + system:5.0f} (user {user:4.0f} sys {system:5.0f})"
        f" avg_batch={n / max(batches, 1):5.1f}"
        f" latency_ms={concurrency * elapsed / n * 1000:6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/var/tmp", help="a directory on the disk to test")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 20, 50])
    parser.add_argument("--fsync-threads", type=int, default=16)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for concurrency in args.concurrency:
        root = Path(tempfile.mkdtemp(prefix="hato-queue-bench-", dir=args.dir))
        try:
            coro = measure(root, concurrency, args.seconds, args.size, args.fsync_threads)
            if args.uvloop:
                import uvloop

                uvloop.run(coro)
            else:
                asyncio.run(coro)
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
