"""Hato's side of the suite's out cell alone, for profiling: the same configuration as
benchmarks/suite.py (suite_servers.submission_hato: submission over STARTTLS, AUTH PLAIN, DKIM
signing, `[[transport]] relay` to a private smtp-sink), driven by loadclient.py, and Hato's own
CPU per message (every process, and each thread of each worker by name). Not a test; needs
neither root nor the suite's DNS server, so it can run while the suite does.

    .venv/bin/python benchmarks/out_profile.py --sessions 50 --messages 1000 --runs 3
    ... --spy DIR          # py-spy record --gil (raw, by thread) of every worker in each run
    ... --perf FILE        # perf record -g of every worker during the last run

The per-thread figures count live threads only: the four lanes of an argon2id verification
(the first login of each worker) end with it, so a cold first run's total is larger than the
sum of its threads.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_servers as ss
from loadclient import write_messages
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles
from peers.tls import make_test_ca
from suite_measure import Side, count_log, loadclient, measured

SIZE = 10240


def messages(path: Path, count: int) -> Path:
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * (SIZE // len(line))
    write_messages(
        path,
        [
            f"From: <sender@{ss.OUT_DOMAIN}>\r\nTo: <x@{ss.NEXT_HOP_DOMAIN}>\r\n"
            f"Subject: out {n}\r\nDate: Mon, 07 Dec 2026 04:00:00 +0000\r\n"
            f"Message-ID: <{n}.{time.time_ns()}@{ss.OUT_DOMAIN}>\r\n\r\n".encode()
            + body
            for n in range(count)
        ],
    )
    return path


def names(pid: int) -> dict[str, str]:
    """Python's names of the threads of `pid` by native id (py-spy dump)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
    found = re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', done.stdout, re.M)
    return {tid: re.sub(r"_\d+$", "_N", name) for tid, name in found}


def threads(pid: int, named: dict[str, str]) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, summed by Python's thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = named.get(task.name, "?")
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK"
        )
    return out


def switches(pids: list[int]) -> int:
    """Voluntary context switches of every thread of `pids` so far (a thread that ended is
    not counted: the executor's threads live on between runs)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                text = (task / "status").read_text()
            except OSError:
                continue
            total += int(text.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--spy", type=Path, help="py-spy each worker into this directory")
    parser.add_argument("--perf", type=Path, help="perf record every worker into this file")
    parser.add_argument("--extra", default="", help="appended to hato.toml")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="out-profile-"))
    tls = make_test_ca(work / "ca").tls_files()
    setup = MailSetup(
        domains=(DomainSetup("bench.test"), DomainSetup(ss.OUT_DOMAIN, users=("sender",))),
        max_connections_per_ip=200,
        submission=True,
        tls=TlsFiles(tls.cert, tls.key),
    )
    sink = ss.smtp_sink(work / "sink")
    hato = ss.submission_hato(work / "hato", setup, f"127.0.0.1:{sink.port}")
    hato.extra += args.extra
    hato._prepare()
    hato.dkim_keygen(ss.OUT_DOMAIN)
    side = Side("hato", hato, [sink], "event=delivered")
    sink.start()
    hato.start()
    try:
        assert hato.proc is not None
        workers = children(hato.proc.pid)
        path = messages(work / "msgs", args.messages)
        target = f"{hato.host}:{hato.submission_port}"
        load = [
            *("--messages", str(path), "--sessions", str(args.sessions)),
            *("--sender", f"sender@{ss.OUT_DOMAIN}", "--to", f"x@{ss.NEXT_HOP_DOMAIN}"),
            *("--long", "--tls", "starttls", "--user", f"sender@{ss.OUT_DOMAIN}"),
            *("--password", USER_PASSWORD, "--helo", "client.out.bench"),
        ]
        for run in range(args.runs):
            named = {pid: names(pid) for pid in workers}
            before = {pid: threads(pid, named[pid]) for pid in workers}
            switched = switches(workers)
            spies = []
            if args.spy is not None:
                args.spy.mkdir(parents=True, exist_ok=True)
                for pid in workers:
                    out = args.spy / f"run{run}-{pid}.txt"
                    command = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil"]
                    command += ["--pid", str(pid), "--format", "raw", "--threads", "-o", str(out)]
                    spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
                time.sleep(1)
            if args.perf is not None and run == args.runs - 1:
                pids = ",".join(map(str, workers))
                perf = ["perf", "record", "-g", "-o", str(args.perf), "-p", pids]
                spies.append(subprocess.Popen(perf, stdout=subprocess.DEVNULL, stderr=2))
                time.sleep(1)
            cell = f"out {args.sessions}"
            result = measured(cell, side, args.messages, loadclient(target, load), count_log)
            for spy in spies:
                spy.send_signal(2)
                spy.wait()
            for pid in workers:
                after = threads(pid, names(pid) | named[pid])
                parts = {
                    name: (after[name] - before[pid].get(name, 0.0)) * 1000 / args.messages
                    for name in after
                }
                shown = ", ".join(f"{n} {v:.2f}" for n, v in sorted(parts.items()) if v >= 0.01)
                print(f"  worker {pid}: {sum(parts.values()):.2f} ms/msg ({shown})")
            waits = (switches(workers) - switched) / args.messages
            rate, cpu = f"{result.rate:.0f} msg/s", f"{result.cpu_ms:.2f} ms/msg"
            print(f"run {run}: {rate}, {cpu}, {waits:.1f} context switches/msg")
    finally:
        side.stop()
        print(f"work: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
