"""How benchmarks/suite.py measures one run: the side under test (a server and its add-ons),
the CPU and PSS of its processes from /proc, the load (smtp-source or loadclient.py) and the
count of what arrived."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import suite_servers as ss
from peers import maildir
from peers.net import find_peer
from smtp_vs_postfix import _tree

DOMAIN = "bench.test"
# The fan-out cell's domain: both servers deliver into 100 Maildirs (through the accept-any
# catch-all Postfix would write all 100 copies into one).
FAN_DOMAIN = "fan.test"


@dataclass
class Side:
    """One server under test and the processes whose CPU and memory count as its own."""

    name: str
    server: ss.BenchHato | ss.BenchPostfix
    daemons: list[ss.Daemon] = field(default_factory=list)
    log_counter: str = ""  # the log line that says the next hop took a message

    def pids(self) -> list[int]:
        if isinstance(self.server, ss.BenchHato):
            main = [self.server.proc.pid] if self.server.proc is not None else []
        else:
            main = self.server.pids()
        return main + ss.daemon_pids(self.daemons)

    def stop(self) -> None:
        try:
            self.server.stop()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
        for daemon in self.daemons:
            daemon.stop()


# --- what a run costs ------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of the processes, their descendants and every descendant already reaped
    (utime + stime + cutime + cstime over each live process): Postfix's daemons come and go,
    the master's cutime keeps what they used."""
    ticks = 0
    for root in pids:
        for pid in _safe_tree(root):
            try:
                fields = _stat(pid)
            except OSError:
                continue
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _safe_tree(pid: int) -> list[int]:
    try:
        return _tree(pid)
    except OSError:
        return [pid]


def tree_pss(pids: list[int]) -> int:
    """KiB of PSS over the processes and their descendants (shared pages counted once)."""
    total = 0
    for root in pids:
        for pid in _safe_tree(root):
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


# --- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    cell: str
    server: str
    messages: int  # delivered (or handed on), counted by us
    seconds: float
    cpu_seconds: float
    pss_kib: int
    peak_pss_kib: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds * 1000 / max(self.messages, 1)


class PeakSampler:
    """Samples the side's PSS while a run lasts (for the big-message cells' peak memory)."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_pss(self.side.pids()))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def count_domain(side: Side, domain: str = DOMAIN) -> int:
    """Messages in every Maildir of `domain` (Hato: a Maildir per local part; Postfix: one
    for the accept-any domain, one per account otherwise)."""
    base = side.server.mailboxes() / domain
    if not base.is_dir():
        return 0
    return sum(maildir.count(box) for box in base.iterdir() if box.is_dir())


def count_fan(side: Side) -> int:
    return count_domain(side, FAN_DOMAIN)


def count_log(side: Side) -> int:
    return side.server.log_text().count(side.log_counter)


def measured(cell: str, side: Side, expect: int, load: Load, counter: Callable[[Side], int]) -> Run:
    before = counter(side)
    cpu0 = tree_cpu(side.pids())
    start = time.monotonic()

    def mark() -> None:
        """Called by the load just before its first connection (after its own start-up)."""
        nonlocal start
        start = time.monotonic()

    with PeakSampler(side) as sampler:
        load(mark)
        deadline = time.monotonic() + 900
        while counter(side) < before + expect:
            if time.monotonic() > deadline:
                got = counter(side) - before
                raise RuntimeError(f"{cell} {side.name}: {got} of {expect} arrived in time")
            time.sleep(0.01)
        done = time.monotonic()
    cpu = tree_cpu(side.pids()) - cpu0
    pss = tree_pss(side.pids())
    run = Run(cell, side.name, expect, done - start, cpu, pss, max(sampler.peak, pss))
    print(
        f"{cell:14} {side.name:8} {run.rate:8.1f} msg/s  cpu {run.cpu_ms:6.2f} ms/msg  "
        f"pss {pss / 1024:6.0f} MiB  peak {run.peak_pss_kib / 1024:6.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return run


Load = Callable[[Callable[[], None]], None]


def smtp_source(side: Side, args: list[str]) -> Load:
    binary = find_peer("smtp-source") or "smtp-source"

    def load(mark: Callable[[], None]) -> None:
        target = f"{side.server.host}:{side.server.port}"
        mark()
        done = subprocess.run([binary, *args, target], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"smtp-source against {side.name}: {done.stderr[-2000:]}")

    return load


def loadclient(target: str, args: list[str]) -> Load:
    def load(mark: Callable[[], None]) -> None:
        command = [sys.executable, str(Path(__file__).with_name("loadclient.py")), *args, target]
        proc = subprocess.Popen(
            [*command, "--wait"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"loadclient {target} did not start: {proc.communicate()}")
        mark()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"loadclient {target}: {out} {err[-2000:]}")

    return load
