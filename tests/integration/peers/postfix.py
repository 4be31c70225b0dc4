"""A private Postfix instance (`postfix -c DIR`) delivering to Maildir, for tests and benchmarks.

Never the system instance: its own main.cf/master.cf, queue, data directory, log file and a
loopback port (see /work/shared/PEERS.md). Used as the benchmark's reference and to prove the
integration harness itself (HATO_IT_TARGET=postfix).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

from .net import LOOPBACK, free_port, wait_for_banner
from .server import MailSetup

_MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {log}
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = reject_unauth_destination
smtpd_forbid_bare_newline = yes
smtpd_peername_lookup = no
local_header_rewrite_clients =
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
biff = no
smtp_dns_support_level = disabled
virtual_mailbox_domains = {domains}
virtual_mailbox_maps = texthash:{etc}/vmailbox, regexp:{etc}/vany
virtual_mailbox_base = {mail}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
message_size_limit = {max_size}
virtual_mailbox_limit = 0
smtpd_recipient_limit = {max_rcpt}
queue_minfree = {min_free}
smtpd_client_connection_count_limit = {per_ip}
"""


# virtual(8) refuses $1 substitution in mailbox maps, so an accept-any domain delivers every
# local part into one Maildir: tests find their messages by marker header, not by directory.
CATCHALL = "catchall"


class PostfixServer:
    """A private Postfix listening on loopback; everything it writes lives under `data_dir`.

    Every directory above `data_dir` must be searchable by the postfix user.
    """

    name = "postfix"
    stores_crlf = False

    def __init__(self, data_dir: Path, setup: MailSetup | None = None, port: int = 0) -> None:
        self.setup = setup or MailSetup()
        self.host = LOOPBACK
        self.port = port or free_port()
        self.data_dir = data_dir
        self.etc = data_dir / "etc"
        self._log = data_dir / "maillog"
        self._written = False

    # --- layout ------------------------------------------------------------------------------
    def _write_config(self) -> None:
        user = pwd.getpwnam("postfix")
        for sub in ("etc", "queue", "data", "mail"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        for owned in (self.data_dir / "data", self.data_dir / "mail"):
            os.chown(owned, user.pw_uid, user.pw_gid)
        self._log.touch()
        os.chown(self._log, user.pw_uid, user.pw_gid)
        setup = self.setup
        (self.etc / "main.cf").write_text(
            _MAIN_CF.format(
                queue=self.data_dir / "queue",
                data=self.data_dir / "data",
                log=self._log,
                host=self.host,
                domains=", ".join(d.name for d in setup.domains),
                etc=self.etc,
                mail=self.data_dir / "mail",
                uid=user.pw_uid,
                gid=user.pw_gid,
                # Postfix wants the mailbox limit >= the message limit; 0 means none.
                max_size=setup.max_message_size,
                max_rcpt=setup.max_recipients,
                min_free=setup.min_free_space,
                per_ip=setup.max_connections_per_ip or 50,  # 50 is Postfix's default
            )
        )
        (self.etc / "master.cf").write_text(_MASTER_CF.format(host=self.host, port=self.port))
        users = [f"{u}@{d.name} {d.name}/{u}/\n" for d in setup.domains for u in d.users]
        (self.etc / "vmailbox").write_text("".join(users))
        anys = [
            f"/^[^@]+@{re.escape(d.name)}$/ {d.name}/{CATCHALL}/\n"
            for d in setup.domains
            if d.accept_any
        ]
        (self.etc / "vany").write_text("".join(anys) or "/^$/ unused/\n")
        self._written = True

    def _postfix(self, *args: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {done.stderr}\n{self.log_text()}")

    # --- MailServer --------------------------------------------------------------------------
    def start(self) -> None:
        if not self._written:
            self._write_config()
        self._postfix("start")
        wait_for_banner(self.host, self.port, time.monotonic() + 60, alive=self.alive)

    def _master_pid(self) -> int | None:
        try:
            return int((self.data_dir / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        pid = self._master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if self.alive():
            self._postfix("stop")
        deadline = time.monotonic() + 20
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            self.kill()

    def kill(self) -> None:
        pid = self._master_pid()
        if pid is None:
            return
        try:
            # The master runs in its own session; its children share its process group.
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def mailbox(self, user: str, domain: str) -> Path:
        listed = any(d.name == domain and user in d.users for d in self.setup.domains)
        return self.data_dir / "mail" / domain / (user if listed else CATCHALL)

    def mailboxes(self) -> Path:
        return self.data_dir / "mail"

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def peak_rss_kib(self) -> int | None:
        return None
