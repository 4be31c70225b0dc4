"""The servers of benchmarks/suite.py: Hato and a private Postfix in each cell's configuration,
the add-ons Postfix needs to do the same work (Debian's policyd-spf, OpenDKIM, OpenDMARC,
Dovecot's SASL), the loopback DNS server both ask, and Postfix's smtp-sink as the next hop.

Postfix is stock everywhere (peers/postfix.py: Maildir delivery through virtual(8)); a cell adds
only what the cell is about (a policy service, milters, a submission service, a relayhost).
The add-ons that read /etc/resolv.conf (policyd-spf, OpenDMARC) run with Postfix's master in a
private mount namespace (`unshare -m`) in which /etc/resolv.conf is a bind mount naming the
test DNS server, which listens on 127.0.0.153 port 53 (resolv.conf has no port).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peers.hato import HatoServer, hato_binary
from peers.net import LOOPBACK, free_port
from peers.postfix import PostfixServer
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue

DNS_ADDRESS = "127.0.0.153"  # loopback; port 53, so that /etc/resolv.conf can name it
CLIENT_ADDRESS = "127.0.0.2"  # the "Internet" sender of the mx cell (not 127.0.0.1, see below)
SENDER_DOMAIN = "sender.bench"
SELECTOR = "bench"
OUT_DOMAIN = "out.bench"  # our users' domain in the outbound cell (Hato/OpenDKIM sign for it)
NEXT_HOP_DOMAIN = "dest.bench"


def zone(sender_dkim_txt: str) -> dict[str, dict[str, list[ZoneValue]]]:
    """What the Internet would answer about the mx cell's sender: SPF for the envelope and
    HELO names, DKIM key, DMARC p=reject, forward and reverse DNS of the client."""
    txt = tuple(sender_dkim_txt[i : i + 250] for i in range(0, len(sender_dkim_txt), 250))
    return {
        SENDER_DOMAIN: {"TXT": [f"v=spf1 ip4:{CLIENT_ADDRESS} -all"], "MX": [(10, "mx.bench")]},
        f"client.{SENDER_DOMAIN}": {"A": [CLIENT_ADDRESS], "TXT": ["v=spf1 a -all"]},
        f"_dmarc.{SENDER_DOMAIN}": {"TXT": ["v=DMARC1; p=reject"]},
        f"{SELECTOR}._domainkey.{SENDER_DOMAIN}": {"TXT": [txt]},
        "2.0.0.127.in-addr.arpa": {"PTR": [f"client.{SENDER_DOMAIN}"]},
    }


def start_dns(zone_data: dict[str, dict[str, list[ZoneValue]]]) -> DnsTestServer:
    dns = DnsTestServer(zone_data, address=DNS_ADDRESS, port=53, default_ttl=3600)
    dns.start()
    return dns


def private_resolv(work: Path) -> Path:
    path = work / "resolv.conf"
    path.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:2 attempts:1\n")
    path.chmod(0o644)
    return path


def in_namespace(resolv: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace whose /etc/resolv.conf is `resolv`."""
    script = (
        f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf && exec {shlex.join(command)}"
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


# --- Hato ------------------------------------------------------------------------------------


class BenchHato(HatoServer):
    """Hato in its default configuration plus the cell's `extra` TOML (appended) and line
    replacements (`replace`: (old, new) pairs applied to the harness's file)."""

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        extra: str = "",
        replace: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(data_dir, setup)
        self.extra = extra
        self.replace = replace

    def config_text(self) -> str:
        """The file as written: no `workers` line, so Hato's own default (one process per
        CPU), not the one process the tests' harness pins when a test does not say."""
        return self._config_text()

    def _config_text(self) -> str:
        text = super()._config_text()
        for old, new in self.replace:
            assert old in text, old
            text = text.replace(old, new, 1)
        return text + self.extra

    def dkim_keygen(self, domain: str) -> None:
        done = subprocess.run(
            [hato_binary(), "dkim", "keygen", domain, "--config", str(self.config)],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self._env(),
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"hato dkim keygen: {done.stderr}")


def checking_hato(data_dir: Path, setup: MailSetup) -> BenchHato:
    """The mx cell: SPF/DKIM/DMARC on (Hato's default; the harness turns them off), asking the
    test DNS server only."""
    return BenchHato(
        data_dir,
        setup,
        extra=f'\n[dns]\nnameservers = ["{DNS_ADDRESS}:53"]\ntimeout = 2\n',
        replace=(("inbound = false", "inbound = true"),),
    )


def submission_hato(data_dir: Path, setup: MailSetup, sink: str) -> BenchHato:
    """The outbound cell: submission with AUTH over STARTTLS, DKIM signing (`hato dkim
    keygen`), everything for NEXT_HOP_DOMAIN to the sink; connection reuse is the default."""
    return BenchHato(
        data_dir,
        setup,
        # Hato's per-user sending limits (200 messages an hour by default) and its spike hold
        # (300 recipients in a window) would refuse the load; Postfix has neither: off.
        replace=(
            (
                "[limits]\n",
                "[limits]\nmessages_per_hour = 0\nrecipients_per_hour = 0\nspike_recipients = 0\n",
            ),
        ),
        extra=(
            f'\n[dns]\nnameservers = ["{DNS_ADDRESS}:53"]\ntimeout = 2\n'
            "\n[delivery]\nallow_loopback = true\n"
            f'\n[[transport]]\ndomain = "{NEXT_HOP_DOMAIN}"\nrelay = "{sink}"\n'
        ),
    )


# --- Postfix ---------------------------------------------------------------------------------


class BenchPostfix(PostfixServer):
    """The private stock Postfix plus a cell's main.cf lines and master.cf services; with
    `resolv`, its master (and so every daemon it starts) runs in a private mount namespace
    whose /etc/resolv.conf names the test DNS server."""

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        main_extra: str = "",
        master_extra: str = "",
        resolv: Path | None = None,
    ) -> None:
        super().__init__(data_dir, setup)
        self.main_extra = main_extra
        self.master_extra = master_extra
        self.resolv = resolv
        self.submission_port = free_port()

    def _write_config(self) -> None:
        super()._write_config()
        main = self.etc / "main.cf"
        main.write_text(main.read_text() + self.main_extra.format(postfix=self))
        master = self.etc / "master.cf"
        master.write_text(master.read_text() + self.master_extra.format(postfix=self))

    def _postfix(self, *args: str) -> None:
        command = ["postfix", "-c", str(self.etc), *args]
        if self.resolv is not None and args == ("start",):
            command = in_namespace(self.resolv, command)
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {done.stderr}\n{self.log_text()}")

    def pids(self) -> list[int]:
        pid = self._master_pid()
        return [] if pid is None else [pid]


POLICYD_CONF = """\
# Debian's /etc/postfix-policyd-spf-python/policyd-spf.conf, except skip_addresses: the stock
# file skips 127.0.0.0/8, and the benchmark's "Internet" client connects from 127.0.0.2.
debugLevel = 1
TestOnly = 1
HELO_reject = Fail
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.1/32
"""

MX_MAIN = """
# --- the mx cell: Debian's add-ons doing SPF, DKIM, DMARC (as their README.Debian set up)
smtpd_recipient_restrictions = reject_unauth_destination,
    check_policy_service unix:private/policyd-spf
policyd-spf_time_limit = 3600
smtpd_milters = inet:127.0.0.1:{postfix.opendkim_port}, inet:127.0.0.1:{postfix.opendmarc_port}
non_smtpd_milters = $smtpd_milters
milter_default_action = accept
"""

MX_MASTER = """\
policyd-spf unix - n n - 0 spawn user=policyd-spf argv=/usr/bin/policyd-spf {postfix.policyd_conf}
"""

SUBMISSION_MAIN = """
# --- the outbound cell: authenticated submission (Dovecot SASL), OpenDKIM signing, a relayhost
smtpd_tls_cert_file = {postfix.tls_cert}
smtpd_tls_key_file = {postfix.tls_key}
smtpd_sasl_type = dovecot
smtpd_sasl_path = {postfix.sasl_path}
relayhost = [127.0.0.1]:{postfix.sink_port}
"""

SUBMISSION_MASTER = """\
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
127.0.0.1:{postfix.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=
  -o smtpd_milters=inet:127.0.0.1:{postfix.opendkim_port}
"""


class Daemon:
    """A foreground add-on (OpenDKIM, OpenDMARC, Dovecot, smtp-sink) as one child process."""

    def __init__(
        self, name: str, command: list[str], work: Path, port: int | None, ready: Path | None = None
    ) -> None:
        """Started once `port` accepts connections, or (port None) once `ready` exists."""
        self.ready = ready
        self.name = name
        self.command = command
        self.work = work
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.work / f"{self.name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_text()[-2000:]}")
            if self.port is not None:
                try:
                    socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            elif self.ready is not None and self.ready.exists():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {self.log_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        path = self.work / f"{self.name}.out"
        return path.read_text(errors="replace") if path.exists() else ""


def opendkim(work: Path, resolv: Path, mode: str, key: tuple[str, Path] | None = None) -> Daemon:
    """OpenDKIM in the foreground: `v` verifies (Nameservers: the test DNS server), `s` signs
    for `key` = (domain, private key file) with selector SELECTOR."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        f"Mode {mode}",
        f"Socket inet:{port}@{LOOPBACK}",
        "AuthservID postfix.test",
        "Background no",
        "Syslog no",
        f"PidFile {work}/opendkim.pid",
        "UserID root",
        f"Nameservers {DNS_ADDRESS}",
        "Canonicalization relaxed/relaxed",
    ]
    if key is not None:
        domain, path = key
        lines += [f"Domain {domain}", f"Selector {SELECTOR}", f"KeyFile {path}"]
        # The key lives in the suite's directory under /tmp, which OpenDKIM's safe-key check
        # refuses (a world-writable parent); the key file itself is 0600.
        lines += ["RequireSafeKeys false"]
        # Debian's default InternalHosts (127.0.0.1) is where the submission client connects
        # from; signing applies to authenticated clients as well (MTA sets the macro).
    config = work / "opendkim.conf"
    config.write_text("\n".join(lines) + "\n")
    return Daemon(
        "opendkim", in_namespace(resolv, ["opendkim", "-f", "-x", str(config)]), work, port
    )


def opendmarc(work: Path, resolv: Path) -> Daemon:
    """OpenDMARC in the foreground, trusting OpenDKIM's results (same authserv-id); SPF from
    policyd-spf's Received-SPF field. IgnoreHosts: none of loopback (default 127.0.0.1)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "ignore").write_text("192.0.2.1\n")
    config = work / "opendmarc.conf"
    config.write_text(
        f"Socket inet:{port}@{LOOPBACK}\nAuthservID postfix.test\n"
        "TrustedAuthservIDs postfix.test\nBackground false\nSyslog false\n"
        f"PidFile {work}/opendmarc.pid\nUserID root\nIgnoreHosts {work}/ignore\n"
        "RejectFailures true\n"
    )
    command = in_namespace(resolv, ["opendmarc", "-f", "-c", str(config)])
    return Daemon("opendmarc", command, work, port)


def dovecot_auth(work: Path, user: str, password: str) -> tuple[Daemon, Path]:
    """Dovecot as Postfix's SASL server only (protocols = none), a passwd-file with one
    SHA512-CRYPT password (Debian's documented scheme); the socket Postfix asks."""
    work.mkdir(parents=True, exist_ok=True)
    hashed = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (work / "passwd").write_text(f"{user}:{hashed}\n")
    socket_path = work / "auth-postfix"
    config = work / "dovecot.conf"
    config.write_text(
        f"protocols = none\nbase_dir = {work}/run\nstate_dir = {work}/state\n"
        f"log_path = {work}/dovecot.log\nssl = no\nauth_mechanisms = plain login\n"
        "disable_plaintext_auth = no\n"
        f"passdb {{\n  driver = passwd-file\n  args = {work}/passwd\n}}\n"
        "userdb {\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}\n"
        f"service auth {{\n  unix_listener {socket_path} {{\n    mode = 0666\n  }}\n}}\n"
    )
    daemon = Daemon("dovecot", ["dovecot", "-F", "-c", str(config)], work, None, socket_path)
    return daemon, socket_path


def smtp_sink(work: Path) -> Daemon:
    """Postfix's smtp-sink: accepts and discards; 1000 connections at most."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [shutil.which("smtp-sink") or "smtp-sink", "-u", "nobody"]
    return Daemon("smtp-sink", [*command, f"{LOOPBACK}:{port}", "1000"], work, port)


def daemon_pids(daemons: list[Daemon]) -> list[int]:
    return [d.proc.pid for d in daemons if d.proc is not None and d.proc.poll() is None]


def chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user)
    for sub in path.rglob("*"):
        shutil.chown(sub, user)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def engine_setup() -> MailSetup:
    """The suite's engine cell: accept-any recipients, limits out of smtp-source's way."""
    return MailSetup(
        domains=(DomainSetup("bench.test", accept_any=True),),
        max_message_size=20 * 1024 * 1024,
        max_recipients=100,
        min_free_space=32 * 1024 * 1024,
        max_connections_per_ip=200,
    )


def default_hato(work: Path) -> tuple[BenchHato, list[int]]:
    """Hato in its default configuration (one worker per CPU), accept-any local recipients
    of bench.test, started, every worker listening: the server and its pids (the
    supervisor's first)."""
    server = BenchHato(work / "h", engine_setup())
    server.start()
    assert server.proc is not None
    pids = [server.proc.pid, *child_pids(server.proc.pid)]
    deadline = time.monotonic() + 60
    while server.log_text().count("event=ready ") < len(pids) - 1:  # every worker listens
        assert time.monotonic() < deadline, "a worker did not start"
        time.sleep(0.1)
    return server, pids


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
