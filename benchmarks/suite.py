"""Issue 15's measurements in one command: Hato against a private stock Postfix in every cell,
interleaved, a settle pause before each run, rounds and medians; writes the results into the
marked section of docs/performance.md (machine, versions, Hato's commit, each run's figures,
and Postfix's configuration as used). Not a test.

    sudo .venv/bin/python benchmarks/suite.py                 # everything, 3 rounds
    sudo .venv/bin/python benchmarks/suite.py --quick         # small counts, 1 round, short pauses
    sudo .venv/bin/python benchmarks/suite.py --only engine,mx --rounds 2
    ... --no-write      # print the section instead of rewriting docs/performance.md
    ... --note "measured on a loaded machine; to be re-run quiet"

Cells (`--only` takes the group names):
- engine: smtp-source, 10 KiB, checks off on both; 10 and 50 sessions; `short` = a connection per
  message (smtp-source's default), `long` = every message of a session on one connection (-d).
- mx: the same four cells with SPF/DKIM/DMARC checked on both sides (Hato's own checks; Postfix
  with policyd-spf, OpenDKIM and OpenDMARC), messages DKIM-signed by the suite with a key the
  loopback test DNS server publishes, sent from 127.0.0.2 by benchmarks/loadclient.py.
- out: authenticated submission (AUTH PLAIN after STARTTLS) relayed to smtp-sink, DKIM signing on
  both sides (Hato's own, OpenDKIM), 10 and 50 sessions, each session's messages on one
  connection; counted by the servers' own logs of what the next hop took.
- idle: 10,000 idle connections held by Hato, PSS per connection, a normal client's command
  latency meanwhile (Hato only: Postfix's process per connection is another design).
- big: 1 MB and 10 MB messages (10 sessions), one message to 100 local recipients.

Needs root (Postfix's daemons, the mount namespace, port 53 on 127.0.0.153), Postfix's
smtp-source and smtp-sink, postfix-policyd-spf-python, opendkim, opendmarc, dovecot-core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_servers as ss
from loadclient import write_messages
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles
from peers.tls import make_test_ca
from smtp_vs_postfix import machine, settle
from suite_idle import IdleResult, idle_cell
from suite_measure import (
    DOMAIN,
    FAN_DOMAIN,
    Run,
    Side,
    count_domain,
    count_fan,
    count_log,
    loadclient,
    measured,
    smtp_source,
    tree_pss,
)
from suite_report import Row, write_section

from dnsserver import DnsTestServer
from hato.authcheck.dkim.sign import DkimAlgorithm, DkimSigner, generate_key, load_signing_key
from hato.model.seams import SystemClock

ROOT = Path(__file__).resolve().parents[1]
FAN_USERS = ("fan", *(f"{n}fan" for n in range(101)))  # smtp-source -r numbers them
SIZE = 10240
GROUPS = ("engine", "mx", "out", "idle", "big")


# --- the cells -------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.quick: bool = args.quick
        self.sides: dict[str, list[Side]] = {}
        self.files: dict[str, Path] = {}  # appendix: name -> config file as used
        self.notes: list[str] = []
        self.dns: DnsTestServer | None = None
        self.resolv = ss.private_resolv(work)
        self.messages = args.messages or (200 if self.quick else 2000)

    # servers per group
    def setup(self, groups: list[str]) -> None:
        key_pem, key_txt = generate_key(DkimAlgorithm.RSA_SHA256)
        self.sender_key = load_signing_key(key_pem)
        self.dns = ss.start_dns(ss.zone(key_txt))
        plain = MailSetup(
            domains=(DomainSetup(DOMAIN, accept_any=True),),
            max_message_size=20 * 1024 * 1024,
            max_recipients=100,
            min_free_space=32 * 1024 * 1024,  # Postfix wants 1.5x the size limit
            # Hato allows 50 connections per client IP, as Postfix: the load comes from one IP,
            # and a closing connection still counts; 200 on both sides, as smtp_vs_postfix.py.
            max_connections_per_ip=200,
        )
        if "engine" in groups or "big" in groups:
            # The fan-out domain: Hato's accept-any domain already gives every local part a
            # Maildir of its own; Postfix needs the names listed (its catch-all is one Maildir).
            fan_pf = DomainSetup(FAN_DOMAIN, users=FAN_USERS)
            fan_hato = DomainSetup(FAN_DOMAIN, accept_any=True)
            pf_setup = replace(plain, domains=(*plain.domains, fan_pf))
            hato_setup = replace(plain, domains=(*plain.domains, fan_hato))
            self.sides["engine"] = [
                Side("postfix", ss.BenchPostfix(self.work / "pf-engine", pf_setup)),
                Side("hato", ss.BenchHato(self.work / "hato-engine", hato_setup)),
            ]
        if "mx" in groups:
            self.sides["mx"] = self._mx_sides(plain)
        if "out" in groups:
            self.sides["out"] = self._out_sides(plain)
        if "idle" in groups:
            idle = ss.BenchHato(
                self.work / "hato-idle",
                plain,
                replace=(
                    (
                        "max_connections_per_ip = 200",
                        "max_connections_per_ip = 12000\nmax_connections = 12000",
                    ),
                ),
            )
            self.sides["idle"] = [Side("hato", idle)]
        for group, sides in self.sides.items():
            for side in sides:
                for daemon in side.daemons:
                    daemon.start()
                side.server.start()
                if isinstance(side.server, ss.BenchPostfix):
                    for name in ("main.cf", "master.cf"):
                        self.files[f"{group}: Postfix {name}"] = side.server.etc / name
                for daemon in side.daemons:
                    for conf in daemon.work.glob("*.conf"):
                        self.files[f"{group}: {conf.name}"] = conf

    def _mx_sides(self, plain: MailSetup) -> list[Side]:
        pf = ss.BenchPostfix(
            self.work / "pf-mx", plain, ss.MX_MAIN, ss.MX_MASTER, resolv=self.resolv
        )
        addons = self.work / "pf-mx-addons"
        dkim = ss.opendkim(addons / "opendkim", self.resolv, "v")
        dmarc = ss.opendmarc(addons / "opendmarc", self.resolv)
        policyd = addons / "policyd-spf.conf"
        policyd.write_text(ss.POLICYD_CONF)
        policyd.chmod(0o644)
        self.files["mx: policyd-spf.conf"] = policyd
        pf.opendkim_port = dkim.port  # type: ignore[attr-defined]
        pf.opendmarc_port = dmarc.port  # type: ignore[attr-defined]
        pf.policyd_conf = policyd  # type: ignore[attr-defined]
        hato = ss.checking_hato(self.work / "hato-mx", plain)
        return [Side("postfix", pf, [dkim, dmarc]), Side("hato", hato)]

    def _out_sides(self, plain: MailSetup) -> list[Side]:
        ca = make_test_ca(self.work / "ca")
        tls = ca.tls_files()
        for path in (tls.cert, tls.key):
            path.chmod(0o644)
        setup = MailSetup(
            domains=(*plain.domains, DomainSetup(ss.OUT_DOMAIN, users=("sender",))),
            max_message_size=plain.max_message_size,
            min_free_space=plain.min_free_space,
            max_connections_per_ip=200,
            submission=True,
            tls=TlsFiles(tls.cert, tls.key),
        )
        sink_pf = ss.smtp_sink(self.work / "sink-pf")
        sink_hato = ss.smtp_sink(self.work / "sink-hato")
        hato = ss.submission_hato(self.work / "hato-out", setup, f"127.0.0.1:{sink_hato.port}")
        hato._prepare()
        hato.dkim_keygen(ss.OUT_DOMAIN)
        addons = self.work / "pf-out-addons"
        key_pem, _txt = generate_key(DkimAlgorithm.RSA_SHA256)
        (addons / "opendkim").mkdir(parents=True)
        key_file = addons / "opendkim" / f"{ss.SELECTOR}.private"
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        dkim = ss.opendkim(addons / "opendkim", self.resolv, "s", (ss.OUT_DOMAIN, key_file))
        dovecot, sasl = ss.dovecot_auth(
            addons / "dovecot", "sender@" + ss.OUT_DOMAIN, USER_PASSWORD
        )
        (addons / "dovecot" / "passwd").chmod(0o644)
        pf = ss.BenchPostfix(self.work / "pf-out", plain, ss.SUBMISSION_MAIN, ss.SUBMISSION_MASTER)
        pf.opendkim_port = dkim.port  # type: ignore[attr-defined]
        pf.tls_cert = tls.cert  # type: ignore[attr-defined]
        pf.tls_key = tls.key  # type: ignore[attr-defined]
        pf.sasl_path = sasl  # type: ignore[attr-defined]
        pf.sink_port = sink_pf.port  # type: ignore[attr-defined]
        return [
            Side("postfix", pf, [dovecot, dkim, sink_pf], "status=sent"),
            Side("hato", hato, [sink_hato], "event=delivered"),
        ]

    # message files
    def signed_messages(self, count: int) -> Path:
        """`count` distinct 10 KiB messages from SENDER_DOMAIN, each DKIM-signed (RSA-2048,
        relaxed/relaxed) by the suite as the sender's own server would."""
        path = self.work / f"signed-{count}.msgs"
        if path.exists():
            return path
        signer = DkimSigner(ss.SENDER_DOMAIN, ss.SELECTOR, self.sender_key, SystemClock())
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        body = line * (SIZE // len(line))
        out = []
        for n in range(count):
            head = (
                f"From: Bench <bench@{ss.SENDER_DOMAIN}>\r\nTo: <rcpt@{DOMAIN}>\r\n"
                f"Subject: message {n}\r\nDate: Mon, 07 Dec 2026 04:00:00 +0000\r\n"
                f"Message-ID: <{n}.{time.time_ns()}@{ss.SENDER_DOMAIN}>\r\n"
            ).encode()
            out.append(signer.sign(head, [body]) + head + b"\r\n" + body)
        write_messages(path, out)
        return path

    def plain_messages(self, count: int) -> Path:
        path = self.work / f"out-{count}.msgs"
        if path.exists():
            return path
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        body = line * (SIZE // len(line))
        out = [
            f"From: <sender@{ss.OUT_DOMAIN}>\r\nTo: <x@{ss.NEXT_HOP_DOMAIN}>\r\n"
            f"Subject: out {n}\r\nDate: Mon, 07 Dec 2026 04:00:00 +0000\r\n"
            f"Message-ID: <{n}.{time.time_ns()}@{ss.OUT_DOMAIN}>\r\n\r\n".encode()
            + body
            for n in range(count)
        ]
        write_messages(path, out)
        return path

    # the plan: (cell, side, run) for each round, interleaved
    def plan(self, groups: list[str]) -> list[tuple[str, Side, Callable[[], Run]]]:
        m = self.messages
        steps: list[tuple[str, Side, Callable[[], Run]]] = []
        for sessions in (10, 50):
            for kind in ("short", "long"):
                if "engine" in groups:
                    for side in self.sides["engine"]:
                        steps.append(self._engine_step(side, sessions, kind, m))
                if "mx" in groups:
                    for side in self.sides["mx"]:
                        steps.append(self._mx_step(side, sessions, kind, m))
            if "out" in groups:
                for side in self.sides["out"]:
                    steps.append(self._out_step(side, sessions, m))
        if "big" in groups:
            big = (20, 5) if self.quick else (100, 20)
            fan = 10 if self.quick else 50
            for side in self.sides["engine"]:
                steps.append(self._size_step(side, "1 MB", 1024 * 1024, big[0]))
            for side in self.sides["engine"]:
                steps.append(self._size_step(side, "10 MB", 10 * 1024 * 1024, big[1]))
            for side in self.sides["engine"]:
                steps.append(self._fanout_step(side, fan))
        return steps

    def _engine_step(
        self, side: Side, sessions: int, kind: str, m: int
    ) -> tuple[str, Side, Callable[[], Run]]:
        cell = f"engine {kind} {sessions}"
        user = f"e{kind}{sessions}"
        flags = ["-d"] if kind == "long" else []
        args = [*flags, "-s", str(sessions), "-m", str(m), "-l", str(SIZE)]
        args += ["-f", "bench@client.test", "-t", f"{user}@{DOMAIN}"]
        return cell, side, lambda: measured(cell, side, m, smtp_source(side, args), count_domain)

    def _mx_step(
        self, side: Side, sessions: int, kind: str, m: int
    ) -> tuple[str, Side, Callable[[], Run]]:
        cell = f"mx {kind} {sessions}"
        target = f"{side.server.host}:{side.server.port}"

        def run() -> Run:
            args = ["--messages", str(self.signed_messages(m)), "--sessions", str(sessions)]
            args += ["--source", ss.CLIENT_ADDRESS, "--sender", f"bench@{ss.SENDER_DOMAIN}"]
            args += ["--to", f"m{kind}{sessions}@{DOMAIN}"]
            args += ["--long"] if kind == "long" else []
            return measured(cell, side, m, loadclient(target, args), count_domain)

        return cell, side, run

    def _out_step(self, side: Side, sessions: int, m: int) -> tuple[str, Side, Callable[[], Run]]:
        cell = f"out {sessions}"
        port = side.server.submission_port
        target = f"{side.server.host}:{port}"

        def run() -> Run:
            args = ["--messages", str(self.plain_messages(m)), "--sessions", str(sessions)]
            args += ["--sender", f"sender@{ss.OUT_DOMAIN}", "--to", f"x@{ss.NEXT_HOP_DOMAIN}"]
            args += ["--long", "--tls", "starttls", "--user", f"sender@{ss.OUT_DOMAIN}"]
            args += ["--password", USER_PASSWORD, "--helo", "client.out.bench"]
            return measured(cell, side, m, loadclient(target, args), count_log)

        return cell, side, run

    def _size_step(
        self, side: Side, label: str, size: int, m: int
    ) -> tuple[str, Side, Callable[[], Run]]:
        cell = f"big {label}"
        args = ["-s", "10", "-m", str(m), "-l", str(size), "-f", "bench@client.test"]
        args += ["-t", f"big{size}@{DOMAIN}"]
        return cell, side, lambda: measured(cell, side, m, smtp_source(side, args), count_domain)

    def _fanout_step(self, side: Side, m: int) -> tuple[str, Side, Callable[[], Run]]:
        cell = "fan-out 100"
        # smtp-source -r 100: 100 recipients per message, a number prepended to each local part.
        args = ["-s", "10", "-m", str(m), "-r", "100", "-l", str(SIZE), "-f", "bench@client.test"]
        args += ["-t", f"fan@{FAN_DOMAIN}"]
        return cell, side, lambda: measured(cell, side, m * 100, smtp_source(side, args), count_fan)

    def stop(self) -> None:
        for sides in self.sides.values():
            for side in sides:
                side.stop()
        if self.dns is not None:
            self.dns.stop()


def check_results(suite: Suite) -> list[str]:
    """Evidence that the mx cell's checks really ran: the first stored message's
    Authentication-Results / Received-SPF fields on each side."""
    found = []
    for side in suite.sides.get("mx", []):
        base = side.server.mailboxes() / DOMAIN
        files = sorted(base.glob("*/new/*"))[:1] if base.is_dir() else []
        for path in files:
            head = path.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            text = head.decode(errors="replace").replace("\r\n", "\n").replace("\n\t", " ")
            text = text.replace("\n ", " ")
            wanted = [
                line.strip()
                for line in text.split("\n")
                if line.lower().startswith(("authentication-results:", "received-spf:"))
            ]
            found.append(f"{side.name}: " + " | ".join(wanted))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="200 messages, 1 round, 5 s pauses")
    parser.add_argument("--only", default=",".join(GROUPS), help="groups: " + ",".join(GROUPS))
    parser.add_argument("--messages", type=int, help="messages per run (default 2000)")
    parser.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--settle", type=float, help="pause before each run (default 40 s)")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections to hold")
    parser.add_argument("--note", default="", help="a line printed above the tables")
    parser.add_argument("--no-write", action="store_true", help="print, not into the docs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (see the docstring)", file=sys.stderr)
        return 2
    groups = [g for g in args.only.split(",") if g]
    rounds = args.rounds or (1 if args.quick else 3)
    pause = args.settle if args.settle is not None else (5.0 if args.quick else 40.0)
    # The idle cell: this process and Hato (which inherits it) each hold one descriptor per
    # idle connection; as many as the hard limit allows (root may lack CAP_SYS_RESOURCE).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="hato-suite-"))
    work.chmod(0o755)  # the postfix user must reach its queue below this directory
    suite = Suite(args, work)
    runs: list[Run] = []
    idle: IdleResult | None = None
    load_before = os.getloadavg()
    try:
        suite.setup(groups)
        steps = suite.plan(groups)
        for _round in range(rounds):
            for _cell, _side, step in steps:
                settle(pause)
                runs.append(step())
        if "idle" in groups:
            settle(pause)
            server = suite.sides["idle"][0].server
            assert isinstance(server, ss.BenchHato)
            idle = idle_cell(server, args.idle, tree_pss)
        evidence = check_results(suite)
        appendix = {name: path.read_text() for name, path in suite.files.items()}
    finally:
        suite.stop()
        if not args.keep:  # the logs of a failed run: --keep
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    rows = [Row(r.cell, r.server, r.rate, r.cpu_ms, r.pss_kib, r.peak_pss_kib) for r in runs]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    header = {
        "command": "sudo .venv/bin/python benchmarks/suite.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        "messages": str(suite.messages),
        "rounds": str(rounds),
        "settle": f"{pause:.0f}",
        "note": args.note,
    }
    section = write_section(
        ROOT / "docs" / "performance.md", header, rows, idle, evidence, appendix, args.no_write
    )
    if args.no_write:
        print(section)
    if args.keep:
        print(f"kept {work}", file=sys.stderr)
    print(json.dumps({"runs": len(runs)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
