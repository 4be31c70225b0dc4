"""The server's CPU per connection, two trees side by side (issue 15 item 2).

Two Hato servers in their default configuration (one worker per CPU, the suite's engine setup:
checks off, accept-any recipients), the first run from another tree's `src` (`--old DIR`, by
PYTHONPATH), the second from this one; rounds interleaved (A, B, B, A, ...). A round is either
`conn`: C connections alone from 10 clients at once (connect, greeting, EHLO, QUIT, close), or
`short`: smtp-source sending M messages of 10 KiB over 10 sessions, one message per connection.
Printed per round and as medians: the CPU time of every process of each server (`/proc/PID/stat`,
user + system, the supervisor and its workers) per connection or message. Not a test; the
machine's load moves single rounds by tens of percent, so compare medians of several rounds.

`.venv/bin/python benchmarks/connect_cpu_bench.py --old /tmp/old-tree [--kind conn|short]
[--rounds 6] [--count 3000]`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import suite_servers as ss
from peers.server import MailSetup

CLIENTS = 10


class TreeHato(ss.BenchHato):
    """BenchHato with the package taken from `src` (None: the installed one)."""

    def __init__(self, data_dir: Path, setup: MailSetup, src: Path | None) -> None:
        super().__init__(data_dir, setup)
        self.src = src

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        return env


def _pids(server: TreeHato) -> list[int]:
    assert server.proc is not None
    top = server.proc.pid
    return [top, *ss.child_pids(top)]


async def _one(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readline()
    writer.write(b"EHLO client.test\r\n")
    while (await reader.readline())[3:4] != b" ":
        pass
    writer.write(b"QUIT\r\n")
    await reader.readline()
    writer.close()
    await writer.wait_closed()


async def _connections(host: str, port: int, count: int) -> None:
    left = [count]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            await _one(host, port)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


def _round(server: TreeHato, kind: str, count: int) -> float:
    pids = _pids(server)
    before = sum(ss.cpu_seconds(p) for p in pids)
    if kind == "conn":
        asyncio.run(_connections(server.host, server.port, count))
    else:
        envelope = ["-f", "a@client.test", "-t", "x@bench.test"]
        size = ["-s", str(CLIENTS), "-m", str(count), "-l", "10240"]
        subprocess.run(
            ["smtp-source", *size, *envelope, f"{server.host}:{server.port}"], check=True
        )
    time.sleep(1.0)  # the last closes and log lines
    return (sum(ss.cpu_seconds(p) for p in pids) - before) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="the other tree (its src/ is used)")
    parser.add_argument("--kind", choices=("conn", "short"), default="conn")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hato-conncpu-"))
    setup = ss.engine_setup()
    servers = {
        "old": TreeHato(work / "old", setup, args.old.resolve() / "src"),
        "new": TreeHato(work / "new", setup, None),
    }
    for server in servers.values():
        server.start()
    try:
        deadline = time.monotonic() + 60
        for server in servers.values():
            while server.log_text().count("event=ready ") < len(_pids(server)) - 1:
                assert time.monotonic() < deadline, "a worker did not start"
                time.sleep(0.1)
        for server in servers.values():
            _round(server, args.kind, 200)  # warm-up
        figures: dict[str, list[float]] = {name: [] for name in servers}
        for n in range(args.rounds):
            order = list(servers) if n % 2 == 0 else list(reversed(servers))
            for name in order:
                ms = _round(servers[name], args.kind, args.count)
                figures[name].append(ms)
                print(f"round {n} {name}: {ms:.3f} ms of server CPU per {args.kind}", flush=True)
        for name, values in figures.items():
            spread = f"{min(values):.3f}-{max(values):.3f}"
            print(f"{name}: median {statistics.median(values):.3f} ms ({spread})")
        print(f"load average: {os.getloadavg()}")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
