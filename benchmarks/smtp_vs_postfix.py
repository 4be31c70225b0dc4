"""Hato and a private Postfix side by side under Postfix's smtp-source load generator.

For each session count S it runs `smtp-source -s S -m M -l 10240` against each server, waits until
all M messages are in the Maildir, and reports: messages/s accepted (smtp-source's wall time) and
delivered (until the last Maildir file), the Hato/Postfix ratio, CPU seconds per 1,000 messages
(machine-wide busy time from /proc/stat during the run, minus smtp-source's own CPU from
RUSAGE_CHILDREN and the benchmark's polling from RUSAGE_SELF), and Hato's memory (peak RSS; with
workers, the sum of their PSS).
Prints a Markdown table. Not a test.

    sudo .venv/bin/python benchmarks/smtp_vs_postfix.py            # M = 2000, S = 1, 20, 50
    sudo .venv/bin/python benchmarks/smtp_vs_postfix.py --quick    # M = 200
    ... --rounds 3      # every run three times, medians in the table
    ... --workers 1     # Hato as one process (default: `[server] workers = 0`, one per CPU)
    ... --servers postfix   # only one side

Needs root (the private Postfix runs its daemons as the postfix user) and Postfix's smtp-source.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from peers import maildir
from peers.hato import HatoServer
from peers.net import find_peer
from peers.postfix import PostfixServer
from peers.server import DomainSetup, MailServer, MailSetup

DOMAIN = "bench.test"
MESSAGE_BYTES = 10240
SETTLE_SECONDS = 40.0


@dataclass(frozen=True, slots=True)
class Result:
    server: str
    sessions: int
    messages: int
    accept_seconds: float
    deliver_seconds: float
    cpu_seconds: float
    peak_rss_kib: int | None
    process_cpu_seconds: float | None = None  # the server process alone (Hato: one process)

    @property
    def accept_rate(self) -> float:
        return self.messages / self.accept_seconds

    @property
    def deliver_rate(self) -> float:
        return self.messages / self.deliver_seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds * 1000 / self.messages

    @property
    def process_ms_per_message(self) -> float | None:
        if self.process_cpu_seconds is None:
            return None
        return self.process_cpu_seconds * 1000 / self.messages


def busy_seconds() -> float:
    """Machine-wide non-idle CPU time so far (all CPUs), from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """CPU time of the measuring side: our finished (waited-for) children, i.e. the smtp-source
    runs (RUSAGE_CHILDREN), plus this process's own Maildir polling (RUSAGE_SELF). The servers
    under test are not counted here: Hato is reaped only after the runs, Postfix daemonizes."""
    total = 0.0
    for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _tree(pid: int) -> list[int]:
    """The process and its children (Hato's workers with `[server] workers`)."""
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return found


def memory_kib(server: MailServer) -> int | None:
    """Hato's memory: with one process its peak RSS (VmHWM); with workers the sum of every
    process's PSS now (shared pages counted once: a sum of RSS would count the code and data
    the workers share with the supervisor after fork two or three times)."""
    proc = getattr(server, "proc", None)
    if proc is None:
        return None
    pids = _tree(proc.pid)
    if len(pids) == 1:
        return server.peak_rss_kib()
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def process_cpu(server: MailServer) -> float | None:
    """User + system CPU seconds of the server's process, its workers and all their threads
    (Postfix's work is spread over daemons that come and go: None). Unlike the machine-wide
    figure, other work on the machine does not inflate it."""
    proc = getattr(server, "proc", None)
    if proc is None:
        return None
    total = 0
    for pid in _tree(proc.pid):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_load(server: MailServer, smtp_source: str, sessions: int, messages: int) -> Result:
    user = f"s{sessions}"
    box = server.mailbox(user, DOMAIN)
    before = maildir.count(box)
    proc0 = process_cpu(server)
    busy0, client0, start = busy_seconds(), client_cpu(), time.monotonic()
    load = ["-s", str(sessions), "-m", str(messages), "-l", str(MESSAGE_BYTES)]
    envelope = ["-f", "bench@client.test", "-t", f"{user}@{DOMAIN}"]
    done = subprocess.run(
        [smtp_source, *load, *envelope, f"{server.host}:{server.port}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    accepted = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source against {server.name} failed: {done.stderr[-2000:]}")
    deadline = accepted + 900
    while maildir.count(box) < before + messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: not all {messages} messages delivered in time")
        time.sleep(0.01)
    delivered = time.monotonic()
    cpu = (busy_seconds() - busy0) - (client_cpu() - client0)
    proc1 = process_cpu(server)
    own = proc1 - proc0 if proc0 is not None and proc1 is not None else None
    return Result(
        server.name,
        sessions,
        messages,
        accepted - start,
        delivered - start,
        cpu,
        memory_kib(server),
        own,
    )


def table(results: list[Result]) -> str:
    postfix = {r.sessions: r for r in results if r.server == "postfix"}
    lines = [
        "| server | sessions | messages | accepted msg/s | delivered msg/s | "
        "Hato/Postfix (delivered) | CPU s / 1,000 msgs | server process CPU ms/msg | "
        "memory MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = ""
        if r.server == "hato" and r.sessions in postfix:
            ratio = f"{r.deliver_rate / postfix[r.sessions].deliver_rate:.2f}"
        rss = f"{r.peak_rss_kib / 1024:.0f}" if r.peak_rss_kib else ""
        own = r.process_ms_per_message
        own_text = f"{own:.2f}" if own is not None else ""
        lines.append(
            f"| {r.server} | {r.sessions} | {r.messages} | {r.accept_rate:.0f} | "
            f"{r.deliver_rate:.0f} | {ratio} | {r.cpu_per_1000:.2f} | {own_text} | {rss} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    postconf = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True, text=True)
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, Postfix {postconf.stdout.strip()}"
    )


def settle(seconds: float) -> None:
    """Let the machine forget the previous run before the next one starts.

    ext4 without a journal (as on the VM these figures come from) skips inodes freed in the last
    30-35 seconds when it allocates a new one (`recently_deleted()` in fs/ext4/ialloc.c), scanning
    past each of them: after a run that deleted thousands of files (Postfix removes a queue file
    per message) every file create of the next run costs 0.3-0.6 ms instead of ~0.03 ms. Without
    this pause the server measured second pays for the first one's deletions."""
    os.sync()
    time.sleep(seconds)


class WorkersHato(HatoServer):
    """Hato with `[server] workers` set (0: one process per CPU)."""

    def __init__(self, data_dir: Path, setup: MailSetup, workers: int) -> None:
        super().__init__(data_dir, setup)
        self.workers = workers

    def _config_text(self) -> str:
        text = super()._config_text()
        if self.workers == 1:
            return text
        return text.replace("[server]\n", f"[server]\nworkers = {self.workers}\n", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="200 messages per run")
    parser.add_argument("--messages", type=int, help="messages per run (default 2000)")
    parser.add_argument("--sessions", default="1,20,50", help="comma-separated session counts")
    parser.add_argument("--servers", default="postfix,hato", help="postfix, hato or both")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Hato's [server] workers (default 0: one process per CPU, as for a busy server)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every run; the table shows the medians"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_SECONDS,
        help=f"seconds to wait (after sync) before each run (default {SETTLE_SECONDS:.0f})",
    )
    args = parser.parse_args()
    messages = args.messages or (200 if args.quick else 2000)
    sessions = [int(s) for s in args.sessions.split(",")]
    smtp_source = find_peer("smtp-source")
    if smtp_source is None or os.geteuid() != 0:
        print("needs root and Postfix's smtp-source (apt-get install postfix)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="hato-bench-"))
    work.chmod(0o755)  # the postfix user must reach its queue below this directory
    setup = MailSetup(
        domains=(DomainSetup(DOMAIN, accept_any=True),),
        max_message_size=10 * 1024 * 1024,
        max_recipients=100,
        min_free_space=16 * 1024 * 1024,
        # Hato allows 20 connections per client IP by default; the load comes from one IP.
        max_connections_per_ip=200,
    )
    servers: list[MailServer] = []
    for name in args.servers.split(","):
        if name == "postfix":
            servers.append(PostfixServer(work / name, setup))
        else:
            servers.append(WorkersHato(work / name, setup, workers=args.workers))
    results: list[Result] = []
    try:
        for server in servers:
            server.start()
        plan = [(c, srv) for _ in range(args.rounds) for c in sessions for srv in servers]
        for count, server in plan:
            settle(args.settle)
            result = run_load(server, smtp_source, count, messages)
            print(
                f"{server.name:8} S={count:<3} accepted {result.accept_rate:7.0f}/s "
                f"delivered {result.deliver_rate:7.0f}/s cpu/1000 {result.cpu_per_1000:.2f}s",
                file=sys.stderr,
            )
            results.append(result)
    finally:
        for server in servers:
            try:
                server.stop()
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(f"smtp-source -s S -m {messages} -l {MESSAGE_BYTES}; {machine()}\n")
    print(table(medians(results)))
    if args.rounds > 1:
        print(f"\nMedians of {args.rounds} rounds; delivered msg/s of each round:\n")
        for (name, count), runs in _by_run(results).items():
            rates = ", ".join(f"{r.deliver_rate:.0f}" for r in runs)
            print(f"- {name} S={count}: {rates}")
    return 0


def _by_run(results: list[Result]) -> dict[tuple[str, int], list[Result]]:
    by: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        by.setdefault((r.server, r.sessions), []).append(r)
    return by


def medians(results: list[Result]) -> list[Result]:
    """Per server and session count, the run with the median delivered rate (whole rows, so
    the columns of one line come from one run)."""
    out = []
    for runs in _by_run(results).values():
        ranked = sorted(runs, key=lambda r: r.deliver_rate)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


if __name__ == "__main__":
    sys.exit(main())
