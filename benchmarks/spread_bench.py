"""How evenly Hato's workers share the work of many connections at once (issue 15 item 2).

Hato in its default configuration (one worker per CPU) takes 1,000 messages of 10 KiB from
smtp-source, over N long sessions (`-d`: one connection carries many messages) and over
short ones (a connection per message); printed per run: the rate, and each process's CPU
seconds (the supervisor's first, then the workers' by pid). A balanced server shows the
workers' CPU close to each other. Not a test; the machine's load moves the rates, not much
the split. `.venv/bin/python benchmarks/spread_bench.py [SESSIONS ...]` (default: 10 50).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import suite_servers as ss

MESSAGES = 1000


def main(sessions: list[int]) -> None:
    work = Path(tempfile.mkdtemp(prefix="hato-spread-"))
    server, pids = ss.default_hato(work)
    try:
        for count in sessions:
            for kind, flags in (("long", ["-d"]), ("short", [])):
                before = {pid: ss.cpu_seconds(pid) for pid in pids}
                started = time.monotonic()
                envelope = ["-f", "a@client.test", "-t", "x@bench.test"]
                size = ["-s", str(count), "-m", str(MESSAGES), "-l", "10240"]
                target = f"{server.host}:{server.port}"
                subprocess.run(["smtp-source", *flags, *size, *envelope, target], check=True)
                rate = MESSAGES / (time.monotonic() - started)
                split = " ".join(f"{ss.cpu_seconds(pid) - before[pid]:.2f}" for pid in pids)
                print(f"{kind} {count}: {rate:.0f} msg/s; CPU s (supervisor, workers): {split}")
                time.sleep(3)  # the queue delivers what it took
    finally:
        server.stop()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [10, 50])
