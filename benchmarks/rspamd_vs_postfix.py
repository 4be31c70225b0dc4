"""Hato with rspamd against Postfix with the same rspamd as a milter, side by side in one run.

One private rspamd (peers/rspamd.py's configuration: Debian's rules, no network modules, no
DNS) serves both: Hato asks its normal worker over HTTP (`[rspamd] url`), Postfix asks its
proxy worker in milter mode (`worker "rspamd_proxy" { milter = yes; self_scan = yes; }`,
`smtpd_milters = inet:127.0.0.1:PORT`), so both pay for the same scan. Then, for each session
count S, `smtp-source -s S -m M -l 10240` against each server; the rate is delivered msg/s
(until the last Maildir file: Hato files rspamd's "add header" verdicts into .Junk, which is
counted too). Also the cost of the check itself: each server's delivered rate without rspamd
(`--without` to include those runs), each server's own CPU per message (Hato's processes;
Postfix's master and daemons, those that exited during the run included) and rspamd's.
rspamd runs one scanning process per CPU on each side (`--rspamd-workers`). Prints a
Markdown table.

    sudo .venv/bin/python benchmarks/rspamd_vs_postfix.py                 # M = 2000, S = 20
    sudo .venv/bin/python benchmarks/rspamd_vs_postfix.py --rounds 3 --without
    sudo .venv/bin/python benchmarks/rspamd_vs_postfix.py --unix   # rspamd over unix sockets
    sudo .venv/bin/python benchmarks/rspamd_vs_postfix.py --auth   # sender checks, as on an MX

Without `--auth` neither side checks SPF, DKIM, DMARC or ARC: the tests' rspamd has those
modules off (and would skip them for the loopback load anyway), and the harness's Hato has
`[authcheck] inbound = false`. With it, both do as for Internet mail: rspamd (its modules on,
`check_local`, a test DNS server with the sender's SPF and DMARC records) checks Postfix's
messages, and Hato checks its own and tells rspamd its results (`trust_our_checks`); a third
server, `hato+rspamd-rechecks`, is the same Hato without `trust_our_checks` (rspamd checks
again what Hato checked), in the same run.

Target (issue 17): Hato with rspamd at least 1.5x Postfix with rspamd, delivered, at S = 20.
Needs root (the private Postfix runs its daemons as the postfix user), Postfix's smtp-source
and Debian's rspamd. Not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peers import maildir
from peers.milters import RspamdMilter
from peers.net import find_peer
from peers.postfix import PostfixServer
from peers.rspamd import enable_checks
from peers.server import DomainSetup, MailServer, MailSetup
from smtp_vs_postfix import WorkersHato, busy_seconds, client_cpu, machine, process_cpu, settle

from dnsserver import DnsTestServer, ZoneValue

DOMAIN = "bench.test"
MESSAGE_BYTES = 10240
SENDER = "bench@client.test"
# `--auth`: the sender's domain, as an Internet sender's (SPF allows the load's address).
SENDER_ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "client.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.client.test": {"TXT": ["v=DMARC1; p=reject"]},
}


class BenchRspamd(RspamdMilter):
    """The tests' private rspamd with `workers` scanning processes on each side: the normal
    worker (Hato's HTTP checks) and the proxy in milter mode (Postfix's, self_scan), as a
    production rspamd runs one per CPU; the tests run one of each."""

    def __init__(
        self, work: Path, workers: int, unix: bool = False, nameserver: str | None = None
    ) -> None:
        super().__init__(work)
        self.workers = workers
        self.unix = unix  # both sides over unix sockets (`--unix`)
        self.nameserver = nameserver  # `--auth`: its SPF/DKIM/DMARC/ARC checks on, this DNS
        self.proxy_socket = work / "run" / "proxy.sock"

    @property
    def milter_address(self) -> str:
        return f"unix:{self.proxy_socket}" if self.unix else super().milter_address

    @property
    def check_url(self) -> str:
        """Hato's `[rspamd] url`: the normal worker's TCP port, or its unix socket."""
        return f"unix:{self.socket}" if self.unix else self.url

    def _write_config(self) -> Path:
        config = super()._write_config()
        text = config.read_text()
        if self.unix:  # the proxy binds a unix socket too (the postfix user may reach it)
            start = text.index('worker "rspamd_proxy" {')
            at = text.index("\n", start) + 1
            text = text[:at] + f'  bind_socket = "{self.proxy_socket} mode=0666";\n' + text[at:]
        for worker in ('worker "normal" {', 'worker "rspamd_proxy" {'):
            start = text.index(worker)
            at = text.index("count = 1;", start)
            text = text[:at] + f"count = {self.workers};" + text[at + len("count = 1;") :]
        config.write_text(text)
        if self.nameserver is not None:
            enable_checks(self.work, config, self.nameserver)
        return config


class RspamdHato(WorkersHato):
    """Hato asking rspamd's normal worker about every message on port 25 (`[rspamd]`); with
    `nameserver` (`--auth`), checking SPF/DKIM/DMARC/ARC itself against it and telling rspamd
    its results (`trust_our_checks`)."""

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        workers: int,
        url: str | None,
        nameserver: str | None = None,
        trust: bool = True,
    ) -> None:
        super().__init__(data_dir, setup, workers)
        self.url = url
        self.nameserver = nameserver
        self.trust = trust  # with `nameserver`: trust_our_checks (else rspamd checks again)
        self.name = ("hato+rspamd" if trust else "hato+rspamd-rechecks") if url else "hato"

    def _config_text(self) -> str:
        text = super()._config_text()
        if self.nameserver is not None:
            assert "inbound = false" in text
            text = text.replace("inbound = false", "inbound = true")
            text += f'\n[dns]\nnameservers = ["{self.nameserver}"]\ntimeout = 2\n'
        if self.url:
            text += f'\n[rspamd]\nurl = "{self.url}"\n'
            if self.nameserver is not None and self.trust:
                text += "trust_our_checks = true\n"
        return text


class MilterPostfix(PostfixServer):
    """Postfix asking rspamd's proxy (milter mode) about every message (`smtpd_milters`)."""

    def __init__(self, data_dir: Path, setup: MailSetup, milter: str | None) -> None:
        super().__init__(data_dir, setup)
        self.milter = milter
        self.name = "postfix+rspamd" if milter else "postfix"

    def _write_config(self) -> None:
        super()._write_config()
        if self.milter:
            with (self.etc / "main.cf").open("a") as main_cf:
                # Postfix's default macros; tempfail as Hato's [rspamd] on_failure default.
                main_cf.write(
                    f"smtpd_milters = {self.milter}\nmilter_protocol = 6\n"
                    "milter_default_action = tempfail\n"
                )


@dataclass(frozen=True, slots=True)
class Result:
    server: str
    sessions: int
    messages: int
    accept_seconds: float
    deliver_seconds: float
    cpu_seconds: float  # machine-wide, minus the load generator's
    rspamd_cpu_seconds: float
    process_cpu_seconds: float | None  # the server's own processes (Hato's, or Postfix's daemons)

    @property
    def deliver_rate(self) -> float:
        return self.messages / self.deliver_seconds

    @property
    def accept_rate(self) -> float:
        return self.messages / self.accept_seconds


def tree_cpu(root: int, reaped: bool = False) -> float:
    """User + system CPU seconds so far of process `root` and its descendants (all threads);
    with `reaped`, also those of its descendants that have exited (cutime and cstime, which
    a parent gains when it waits for a child)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile: its parent's cutime has it (or will)
        total += int(fields[11]) + int(fields[12])
        if reaped:
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def rspamd_cpu(rspamd: BenchRspamd) -> float:
    """User + system CPU seconds of rspamd's main process and its workers so far."""
    assert rspamd.proc is not None
    return tree_cpu(rspamd.proc.pid)


def server_cpu(server: MailServer) -> float | None:
    """The server's own processes' CPU seconds so far: Hato's supervisor and workers, or
    Postfix's master and every daemon of it, those that exited included (smtpd, cleanup and
    local come and go: an smtpd ends after 100 sessions), so both sides' own cost per message
    is in the table, beside rspamd's."""
    if isinstance(server, PostfixServer):
        try:
            pid_file = server.data_dir / "queue" / "pid" / "master.pid"
            return tree_cpu(int(pid_file.read_text().split()[0]), reaped=True)
        except (OSError, ValueError, IndexError):
            return None
    return process_cpu(server)


def delivered(server: MailServer, user: str) -> int:
    box = server.mailbox(user, DOMAIN)
    return maildir.count(box) + maildir.count(box / ".Junk")


def run_load(
    server: MailServer, rspamd: BenchRspamd, smtp_source: str, sessions: int, messages: int
) -> Result:
    user = f"s{sessions}"
    before = delivered(server, user)
    busy0, client0, rspamd0 = busy_seconds(), client_cpu(), rspamd_cpu(rspamd)
    own0 = server_cpu(server)
    start = time.monotonic()
    load = ["-s", str(sessions), "-m", str(messages), "-l", str(MESSAGE_BYTES)]
    envelope = ["-f", SENDER, "-t", f"{user}@{DOMAIN}"]
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
    while delivered(server, user) < before + messages:
        if time.monotonic() > deadline:
            got = delivered(server, user) - before
            raise RuntimeError(f"{server.name}: {got} of {messages} delivered in time")
        time.sleep(0.01)
    end = time.monotonic()
    cpu = (busy_seconds() - busy0) - (client_cpu() - client0)
    own1 = server_cpu(server)
    return Result(
        server.name,
        sessions,
        messages,
        accepted - start,
        end - start,
        cpu,
        rspamd_cpu(rspamd) - rspamd0,
        own1 - own0 if own0 is not None and own1 is not None else None,
    )


def table(results: list[Result]) -> str:
    rate = {(r.server, r.sessions): r.deliver_rate for r in results}
    lines = [
        "| server | sessions | messages | accepted msg/s | delivered msg/s | vs Postfix+rspamd |"
        " machine CPU ms/msg | server's own CPU ms/msg | rspamd CPU ms/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        postfix = rate.get(("postfix+rspamd", r.sessions))
        ratio = f"{r.deliver_rate / postfix:.2f}" if postfix else ""
        own = r.process_cpu_seconds
        own_text = f"{own * 1000 / r.messages:.2f}" if own is not None else ""
        lines.append(
            f"| {r.server} | {r.sessions} | {r.messages} | {r.accept_rate:.0f} | "
            f"{r.deliver_rate:.0f} | {ratio} | {r.cpu_seconds * 1000 / r.messages:.2f} | "
            f"{own_text} | {r.rspamd_cpu_seconds * 1000 / r.messages:.2f} |"
        )
    return "\n".join(lines)


def medians(results: list[Result]) -> list[Result]:
    by: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        by.setdefault((r.server, r.sessions), []).append(r)
    return [sorted(v, key=lambda r: r.deliver_rate)[(len(v) - 1) // 2] for v in by.values()]


def load_setup() -> MailSetup:
    """Both servers' mail setup: any recipient of DOMAIN, the load's one IP allowed many."""
    return MailSetup(
        domains=(DomainSetup(DOMAIN, accept_any=True),),
        max_message_size=10 * 1024 * 1024,
        max_recipients=100,
        min_free_space=16 * 1024 * 1024,
        max_connections_per_ip=200,  # the load comes from one IP
    )


def stop_all(servers: Sequence[MailServer], rspamd: BenchRspamd) -> None:
    """Stop every server (a failure to stop is printed, not raised), then rspamd."""
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
    rspamd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", default="20", help="comma-separated session counts")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; the table shows medians")
    parser.add_argument("--without", action="store_true", help="also both servers without rspamd")
    parser.add_argument("--workers", type=int, default=0, help="Hato's [server] workers")
    parser.add_argument(
        "--rspamd-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="rspamd's scanning processes on each side (default: one per CPU)",
    )
    parser.add_argument("--settle", type=float, default=40.0, help="seconds before each run")
    parser.add_argument(
        "--unix",
        action="store_true",
        help="both servers reach rspamd over unix sockets (Hato: [rspamd] url = unix:/PATH; "
        "Postfix: smtpd_milters = unix:/PATH), not TCP on loopback",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="SPF/DKIM/DMARC/ARC checked as for Internet mail: rspamd's checks on, also for the "
        "loopback load, against a test DNS server; Hato checks itself and tells rspamd its "
        "results ([rspamd] trust_our_checks); Postfix's rspamd checks",
    )
    args = parser.parse_args()
    smtp_source = find_peer("smtp-source")
    if smtp_source is None or os.geteuid() != 0 or find_peer("rspamd") is None:
        print("needs root, Postfix's smtp-source and rspamd (apt-get install)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hato-rspamd-bench-"))
    work.chmod(0o755)  # the postfix user must reach its queue below this directory
    setup = load_setup()
    dns = DnsTestServer(SENDER_ZONE)
    dns.start()
    ns = dns.nameserver if args.auth else None
    rspamd = BenchRspamd(work / "rspamd", args.rspamd_workers, args.unix, ns)
    servers: list[MailServer] = []
    results: list[Result] = []
    try:
        rspamd.start()
        servers = [
            MilterPostfix(work / "postfix-rspamd", setup, rspamd.milter_address),
            RspamdHato(work / "hato-rspamd" / "data", setup, args.workers, rspamd.check_url, ns),
        ]
        if args.auth:  # the same without trust_our_checks: rspamd checks again
            hato = work / "hato-rechecks" / "data"
            servers.append(RspamdHato(hato, setup, args.workers, rspamd.check_url, ns, False))
        if args.without:
            servers += [
                MilterPostfix(work / "postfix", setup, None),
                RspamdHato(work / "hato" / "data", setup, args.workers, None, ns),
            ]
        for server in servers:
            server.start()
        sessions = [int(s) for s in args.sessions.split(",")]
        for _ in range(args.rounds):
            for count in sessions:
                for server in servers:
                    settle(args.settle)
                    result = run_load(server, rspamd, smtp_source, count, args.messages)
                    print(
                        f"{server.name:15} S={count:<3} delivered {result.deliver_rate:6.0f}/s "
                        f"rspamd cpu {result.rspamd_cpu_seconds * 1000 / args.messages:.2f} ms/msg",
                        file=sys.stderr,
                    )
                    results.append(result)
    finally:
        stop_all(servers, rspamd)
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    transport = "unix sockets" if args.unix else "TCP on loopback"
    checks = (
        "SPF/DKIM/DMARC/ARC checked (rspamd for Postfix; Hato itself, rspamd told)"
        if args.auth
        else "no SPF/DKIM/DMARC/ARC checks on either side"
    )
    print(
        f"smtp-source -s S -m {args.messages} -l {MESSAGE_BYTES}; rspamd over {transport}; "
        + checks
    )
    print(machine())
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print(table(medians(results)))
    if args.rounds > 1:
        print(f"\nMedians of {args.rounds} rounds; delivered msg/s of each round, in order:\n")
        by: dict[tuple[str, int], list[Result]] = {}
        for r in results:
            by.setdefault((r.server, r.sessions), []).append(r)
        for (name, count), runs in by.items():
            print(f"- {name} S={count}: " + ", ".join(f"{r.deliver_rate:.0f}" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
