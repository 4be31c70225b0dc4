"""Hato's memory in its default configuration (issue 15 item 2: PSS ≤ 100 MB for all processes).

Starts `hato serve` as benchmarks/suite.py's engine cell does (suite_servers.BenchHato: the
harness's configuration without a `workers` line, so one worker per CPU plus the supervisor,
an accept-any domain, the inbound checks off), waits until it is idle, prints every process's
PSS and private dirty memory from /proc/PID/smaps_rollup and where it lies (smaps: the heap,
anonymous mappings (malloc arenas, thread stacks, Python's obmalloc arenas), shared libraries,
other files), then sends a burst of mail (`--messages` over `--sessions` SMTP sessions at once,
10 KiB each) and prints the same again. PSS counts a page shared by n processes as 1/n in
each, so the sum over the processes is what they cost together. The pages of files (the
shared libraries) are shared with whatever else on the machine maps them, so their part of
the sum moves with the machine's other processes; the anonymous part (Pss_Anon: the heap,
Python's objects) is Hato's own and the steadier figure to compare.

Not a test: `.venv/bin/python benchmarks/memory_bench.py [--messages 2000] [--sessions 20]
[--settle 3]`. Wall time does not matter here; the figures are pages, not speeds.
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_servers as ss
from peers.net import LOOPBACK
from peers.server import DomainSetup, MailSetup

DOMAIN = "bench.test"
BODY = "Subject: memory\r\n\r\n" + ("x" * 78 + "\r\n") * 128  # ~10 KiB


def children(pid: int) -> list[int]:
    out = [pid]
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return out
    for child in text.split():
        out += children(int(child))
    return out


def rollup(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


def kind(name: str) -> str:
    if name == "[heap]":
        return "heap"
    if name == "":
        return "anon"
    if name.startswith("["):
        return name
    if ".so" in name:
        return "libs"
    return "files"


def by_kind(pid: int) -> dict[str, tuple[int, int]]:
    """KiB of (Pss, Private_Dirty) per kind of mapping."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    current = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=5)
        if "-" in first[0] and ":" not in first[0]:
            current = kind(first[5] if len(first) > 5 else "")
        elif first[0] == "Pss:":
            totals[current][0] += int(first[1])
        elif first[0] == "Private_Dirty:":
            totals[current][1] += int(first[1])
    return {k: (v[0], v[1]) for k, v in totals.items()}


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def report(title: str, root: int) -> tuple[int, int]:
    print(f"--- {title}")
    total = dirty = anon = 0
    for pid in children(root):
        r = rollup(pid)
        total += r["Pss"]
        dirty += r["Private_Dirty"]
        anon += r["Pss_Anon"]
        role = "supervisor" if pid == root else "worker"
        parts = "  ".join(
            f"{k} {pss / 1024:.1f}/{dirty / 1024:.1f}"
            for k, (pss, dirty) in sorted(by_kind(pid).items(), key=lambda kv: -kv[1][0])
            if pss >= 512
        )
        print(
            f"{role:10} pid {pid:7}  threads {threads(pid):2}  Pss {r['Pss'] / 1024:5.1f} MiB  "
            f"Private_Dirty {r['Private_Dirty'] / 1024:5.1f}  Rss {r['Rss'] / 1024:5.1f}"
        )
        print(f"{'':12}(Pss/Private_Dirty MiB) {parts}")
    print(
        f"PSS sum {total / 1024:.1f} MiB  of it anonymous {anon / 1024:.1f}  "
        f"Private_Dirty sum {dirty / 1024:.1f} MiB"
    )
    return total, anon


def send(port: int, count: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=60) as client:
        for n in range(count):
            client.sendmail(
                f"sender{n}@client.test", [f"user{n % 50}@{DOMAIN}"], BODY.encode("ascii")
            )


def burst(port: int, messages: int, sessions: int) -> None:
    each = messages // sessions
    workers = [threading.Thread(target=send, args=(port, each)) for _ in range(sessions)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    args = parser.parse_args()
    setup = MailSetup(
        domains=(DomainSetup(DOMAIN, accept_any=True),),
        max_message_size=20 * 1024 * 1024,
        max_recipients=100,
        min_free_space=32 * 1024 * 1024,
        max_connections_per_ip=200,
    )
    with tempfile.TemporaryDirectory(prefix="hato-memory-") as work:
        server = ss.BenchHato(Path(work) / "hato", setup)
        server.start()
        try:
            assert server.proc is not None
            root = server.proc.pid
            time.sleep(args.settle)  # not synchronisation: let start-up's garbage settle
            idle, idle_anon = report("idle", root)
            burst(server.port, args.messages, args.sessions)
            time.sleep(args.settle)
            title = f"after {args.messages} messages over {args.sessions} sessions"
            after, after_anon = report(title, root)
            print(
                f"SUMMARY PSS idle {idle / 1024:.1f} MiB (anonymous {idle_anon / 1024:.1f}), "
                f"after the burst {after / 1024:.1f} MiB (anonymous {after_anon / 1024:.1f})"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
