"""The server's CPU per message in long sessions, engine against engine (issue 15 item 2).

Hato in its default configuration (one worker per CPU, the inbound checks off as the suite's
engine cells have them, accept-any local recipients) takes `-m` messages of 10 KiB from
smtp-source over S long sessions (`-d`: one connection carries many messages), after 200 of
warm-up. Printed per round: the rate and the CPU of all of the server's processes (user and
system, from /proc/PID/stat, the supervisor's and the workers') and their threads' context
switches (/proc/PID/task/TID/status) per message; with `--strace`
also the system calls per message of the workers (`strace -c -f`, which slows them: its CPU
figure is not comparable). To compare two trees, run it with `PYTHONPATH=<tree>/src`
alternately. Not a test: `.venv/bin/python benchmarks/long_session_cpu_bench.py [--sessions
S] [--messages N] [--rounds R] [--strace]`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import suite_servers as ss


def _switches(pids: list[int]) -> int:
    """Context switches of every thread of `pids` (a GIL hand-off between a worker's threads
    is one or two; so is every wait for the socket or the disk)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _send(target: str, sessions: int, messages: int) -> float:
    started = time.monotonic()
    envelope = ["-f", "a@client.test", "-t", "x@bench.test"]
    size = ["-s", str(sessions), "-m", str(messages), "-l", "10240"]
    subprocess.run(["smtp-source", "-d", *size, *envelope, target], check=True)
    return messages / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hato-longcpu-"))
    server, pids = ss.default_hato(work)
    target = f"{server.host}:{server.port}"
    try:
        _send(target, args.sessions, 200)  # warm-up
        time.sleep(1)
        for _ in range(args.rounds):
            tracer = None
            if args.strace:
                out = work / "strace.txt"
                attach = [a for pid in pids[1:] for a in ("-p", str(pid))]
                tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *attach])
                time.sleep(1)
            before = sum(ss.cpu_seconds(pid) for pid in pids)
            switched = _switches(pids)
            rate = _send(target, args.sessions, args.messages)
            time.sleep(0.5)  # the last batches' syncs
            cpu = sum(ss.cpu_seconds(pid) for pid in pids) - before
            switches = (_switches(pids) - switched) / args.messages
            print(
                f"{rate:.0f} msg/s; server CPU {cpu * 1000 / args.messages:.3f} ms/msg; "
                f"{switches:.1f} context switches/msg"
            )
            if tracer is not None:
                tracer.send_signal(signal.SIGINT)
                tracer.wait()
                for line in (work / "strace.txt").read_text().splitlines()[2:]:
                    fields = line.split()
                    if len(fields) >= 5 and fields[3].isdigit():
                        calls = int(fields[3]) / args.messages
                        print(f"  {fields[-1]:<16} {calls:6.2f} a message")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
