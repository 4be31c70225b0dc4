"""How evenly Hato's workers share the work of many connections at once (issue 15 item 2).

Hato in its default configuration (one worker per CPU) takes 1,000 messages of 10 KiB from
smtp-source, over N long sessions (`-d`: one connection carries many messages) and over
short ones (a connection per message); printed per run: the rate, and each process's CPU
seconds (the supervisor's first, then the workers' by pid). A balanced server shows the
workers' CPU close to each other. Not a test; the machine's load moves the rates, not much
the split. `.venv/bin/python benchmarks/spread_bench.py [SESSIONS ...]` (default: 10 50).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import suite_servers as ss
from peers.server import DomainSetup, MailSetup

MESSAGES = 1000


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def main(sessions: list[int]) -> None:
    work = Path(tempfile.mkdtemp(prefix="hato-spread-"))
    setup = MailSetup(
        domains=(DomainSetup("bench.test", accept_any=True),),
        max_message_size=20 * 1024 * 1024,
        max_recipients=100,
        min_free_space=32 * 1024 * 1024,
        max_connections_per_ip=200,
    )
    server = ss.BenchHato(work / "h", setup)
    server.start()
    assert server.proc is not None
    pids = [server.proc.pid, *_children(server.proc.pid)]
    deadline = time.monotonic() + 60
    while server.log_text().count("event=ready ") < len(pids) - 1:  # every worker listens
        assert time.monotonic() < deadline, "a worker did not start"
        time.sleep(0.1)
    try:
        for count in sessions:
            for kind, flags in (("long", ["-d"]), ("short", [])):
                before = {pid: _cpu(pid) for pid in pids}
                started = time.monotonic()
                envelope = ["-f", "a@client.test", "-t", "x@bench.test"]
                size = ["-s", str(count), "-m", str(MESSAGES), "-l", "10240"]
                target = f"{server.host}:{server.port}"
                subprocess.run(["smtp-source", *flags, *size, *envelope, target], check=True)
                rate = MESSAGES / (time.monotonic() - started)
                split = " ".join(f"{_cpu(pid) - before[pid]:.2f}" for pid in pids)
                print(f"{kind} {count}: {rate:.0f} msg/s; CPU s (supervisor, workers): {split}")
                time.sleep(3)  # the queue delivers what it took
    finally:
        server.stop()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [10, 50])
