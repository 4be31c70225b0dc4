"""Hato's own CPU per message on the rspamd path, for several source trees, rounds interleaved.

One private rspamd (rspamd_vs_postfix.py's, over unix sockets unless `--tcp`) and one Hato per
tree, each asking rspamd about every message on port 25 as in `rspamd_vs_postfix.py`; then, round
by round, `smtp-source -s S -m M -l 10240` against each Hato in turn. The figure is each Hato's
own processes' CPU per message (user + system of the supervisor, its workers and all their
threads, from /proc, until the last message is in its Maildir), which other work on a loaded
machine inflates far less than the rates. For bisecting a regression and for before/after
figures of a change: a tree is any checkout of Hato (`git worktree add --detach /tmp/old
COMMIT`), run by this venv's interpreter with PYTHONPATH=TREE/src.

    sudo .venv/bin/python benchmarks/rspamd_trees_bench.py --tree old=/tmp/old --tree new=. \\
        --rounds 5 --messages 1000

`--alone` adds each tree without `[rspamd]` in the same rounds, so that what the check adds to
the same Hato is measured beside it (at its own, higher rate: docs/performance.md, "Where
the extra millisecond goes"); `--perf DIR` records each run with `perf record -e cpu-clock`
(running time only, the kernel's included; `perf report -i FILE --sort pid,dso` splits the
event loops from the Maildir threads), which py-spy cannot (it counts a runnable thread, or
one in a system call, as busy); `--idle SECONDS` measures each server's CPU per second with
no mail before its run (timers and periodic work, a cost per second that a lower rate
spreads over fewer messages).

Prints each round's figures and, per tree, the median. Needs root, smtp-source and rspamd
(and perf for `--perf`). Not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from peers.net import find_peer
from peers.server import MailSetup
from rspamd_vs_postfix import BenchRspamd, Result, RspamdHato, load_setup, run_load, stop_all
from smtp_vs_postfix import _tree, machine, process_cpu, settle


class TreeHato(RspamdHato):
    """RspamdHato run from the source tree `src` (PYTHONPATH), named `label`."""

    def __init__(
        self, data_dir: Path, setup: MailSetup, workers: int, url: str | None, label: str, src: Path
    ) -> None:
        super().__init__(data_dir, setup, workers, url)
        self.name = label
        self.src = src

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "PYTHONPATH": str(self.src)}


def spying(server: TreeHato, directory: Path, round_no: int) -> subprocess.Popen[bytes]:
    """py-spy recording the server's processes (200 Hz, raw stacks) until interrupted."""
    assert server.proc is not None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{server.name}-{round_no + 1}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--threads"]
    command += ["--rate", "200", "--format", "raw", "--nonblocking", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return process


def tracing(server: TreeHato, directory: Path, round_no: int) -> subprocess.Popen[bytes]:
    """strace -c of every process and thread of the server until interrupted."""
    assert server.proc is not None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{server.name}-{round_no + 1}.txt"
    command = ["strace", "-c", "-f", "-o", str(out)]
    for pid in _tree(server.proc.pid):
        command += ["-p", str(pid)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return process


def perfing(server: TreeHato, directory: Path, round_no: int) -> subprocess.Popen[bytes]:
    """perf record (CPU clock, 999 Hz) of every process and thread of the server until
    interrupted: where its CPU goes, the kernel's share included, idle waits excluded."""
    assert server.proc is not None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{server.name}-{round_no + 1}.data"
    pids = ",".join(str(pid) for pid in _tree(server.proc.pid))
    command = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", pids, "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return process


def idle_cpu(server: TreeHato, seconds: float) -> float:
    """The server's CPU ms per second while it has no mail to handle (its timers, its
    periodic work): a cost per second, which a lower rate spreads over fewer messages."""
    before = process_cpu(server) or 0.0
    time.sleep(seconds)
    return ((process_cpu(server) or 0.0) - before) * 1000 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--tree",
        action="append",
        required=True,
        help="LABEL=PATH of a Hato checkout (repeat; at least one)",
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each tree once per round")
    parser.add_argument("--workers", type=int, default=0, help="Hato's [server] workers")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before each run")
    parser.add_argument("--tcp", action="store_true", help="rspamd over TCP, not a unix socket")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="also each tree without [rspamd] (LABEL-alone), in the same rounds: what the "
        "check adds to the same Hato",
    )
    parser.add_argument(
        "--strace",
        type=Path,
        help="a directory: strace -c counts each run's system calls (every thread and process)",
    )
    parser.add_argument(
        "--pyspy",
        type=Path,
        help="a directory: py-spy records each run (raw format, every process of the server)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="seconds: before each run, the server's idle CPU ms per second over that long",
    )
    parser.add_argument(
        "--perf",
        type=Path,
        help="a directory: perf record (CPU clock) of each run, every process and thread",
    )
    args = parser.parse_args()
    smtp_source = find_peer("smtp-source")
    if smtp_source is None or os.geteuid() != 0 or find_peer("rspamd") is None:
        print("needs root, Postfix's smtp-source and rspamd (apt-get install)", file=sys.stderr)
        return 2
    trees = []
    for spec in args.tree:
        label, _, path = spec.partition("=")
        src = Path(path).resolve() / "src"
        if not (src / "hato").is_dir():
            print(f"--tree {spec}: no src/hato below {path}", file=sys.stderr)
            return 2
        trees.append((label, src))
    work = Path(tempfile.mkdtemp(prefix="hato-rspamd-trees-"))
    work.chmod(0o755)
    setup = load_setup()
    rspamd = BenchRspamd(work / "rspamd", os.cpu_count() or 1, unix=not args.tcp)
    servers: list[TreeHato] = []
    results: dict[str, list[Result]] = {}
    try:
        rspamd.start()
        for label, src in trees:
            data = work / f"hato-{label}" / "data"
            servers.append(TreeHato(data, setup, args.workers, rspamd.check_url, label, src))
            if args.alone:
                data = work / f"hato-{label}-alone" / "data"
                servers.append(TreeHato(data, setup, args.workers, None, f"{label}-alone", src))
        for server in servers:
            server.start()
        for round_no in range(args.rounds):
            # Rotate the order each round, so no tree always runs right after another.
            turn = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
            for server in turn:
                settle(args.settle)
                idle = idle_cpu(server, args.idle) if args.idle else None
                spy = spying(server, args.pyspy, round_no) if args.pyspy else None
                if args.strace:
                    spy = tracing(server, args.strace, round_no)
                if args.perf:
                    spy = perfing(server, args.perf, round_no)
                r = run_load(server, rspamd, smtp_source, args.sessions, args.messages)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                results.setdefault(server.name, []).append(r)
                own = (r.process_cpu_seconds or 0.0) * 1000 / r.messages
                print(
                    f"round {round_no + 1} {server.name:12} delivered {r.deliver_rate:6.0f}/s "
                    f"hato {own:.2f} ms/msg rspamd "
                    f"{r.rspamd_cpu_seconds * 1000 / r.messages:.2f} ms/msg "
                    f"load {os.getloadavg()[0]:.1f}"
                    + (f" idle {idle:.1f} ms/s" if idle is not None else ""),
                    flush=True,
                )
    finally:
        stop_all(servers, rspamd)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsmtp-source -s {args.sessions} -m {args.messages} -l 10240; {machine()}")
    print("| tree | Hato CPU ms/msg by round | median | delivered msg/s by round |")
    print("|---|---|---:|---|")
    for label, runs in results.items():
        per = [(r.process_cpu_seconds or 0.0) * 1000 / r.messages for r in runs]
        if not per:
            continue
        print(
            f"| {label} | {', '.join(f'{v:.2f}' for v in per)} | {statistics.median(per):.2f} | "
            f"{', '.join(f'{r.deliver_rate:.0f}' for r in runs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
