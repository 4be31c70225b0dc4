"""The idle cell of benchmarks/suite.py: N connections opened to Hato's mx port and held idle
(each has read its 220 greeting), Hato's PSS before and while they are held, and meanwhile a
normal client's SMTP transactions, every command's reply time measured."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from peers.hato import HatoServer
from peers.net import RawSession


@dataclass(frozen=True, slots=True)
class IdleResult:
    wanted: int
    held: int
    pss_before_kib: int
    pss_held_kib: int
    latency_before_ms: list[float]
    latency_held_ms: list[float]

    @property
    def kib_per_connection(self) -> float:
        return (self.pss_held_kib - self.pss_before_kib) / max(self.held, 1)


def transactions(host: str, port: int, count: int) -> list[float]:
    """`count` small transactions on one connection; every command's reply time in ms."""
    times: list[float] = []
    session = RawSession(host, port, timeout=30)
    session.reply()
    message = b"Subject: probe\r\n\r\nprobe\r\n.\r\n"
    for n in range(count):
        for line in (
            b"EHLO probe.test",
            b"MAIL FROM:<probe@client.test>",
            f"RCPT TO:<idle{n % 3}@bench.test>".encode(),
            b"DATA",
        ):
            start = time.monotonic()
            session.command(line)
            times.append((time.monotonic() - start) * 1000)
        start = time.monotonic()
        session.send(message)
        code, _ = session.reply()
        times.append((time.monotonic() - start) * 1000)
        if code != 250:
            raise RuntimeError(f"probe message refused: {code}")
    session.command(b"QUIT")
    return times


def idle_cell(server: HatoServer, count: int, pss: Callable[[list[int]], int]) -> IdleResult:
    assert server.proc is not None
    pids = [server.proc.pid]
    before = transactions(server.host, server.port, 20)
    pss_before = pss(pids)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((server.host, server.port), timeout=30)
            held.append(sock)
            if not sock.recv(512).startswith(b"220"):
                break
        time.sleep(2)  # let the server's per-connection state settle before it is measured
        pss_held = pss(pids)
        during = transactions(server.host, server.port, 20)
        # Still held (not closed by the server) after the probes?
        alive = 0
        for sock in held:
            sock.setblocking(False)
            try:
                alive += 1 if sock.recv(1) else 0
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
    finally:
        for sock in held:
            sock.close()
    result = IdleResult(count, alive, pss_before, pss_held, before, during)
    print(
        f"idle: {alive} of {count} held, {result.kib_per_connection:.1f} KiB each, "
        f"probe max {max(during):.1f} ms (before {max(before):.1f} ms)",
        file=sys.stderr,
    )
    return result
