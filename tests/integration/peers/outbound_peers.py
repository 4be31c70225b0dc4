"""Debian receivers for Hato's outbound tests, each private and on loopback (PEERS.md):

- `SmtpSink`: Postfix's smtp-sink, dumping every transaction into a file we count;
- `PostfixTlsReceiver`: a private Postfix taking mail with STARTTLS (the test CA's certificate),
  logging TLS and adding "using TLS" to its Received header;
- `PostfixSubmission`: a private Postfix as a smarthost: STARTTLS required, then SASL AUTH
  against a private Dovecot auth service, before any mail is taken;
- `Dovecot`: a private Dovecot, either LMTP into its own Maildir or only the auth service.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .dovecot_imap import DovecotMaster
from .net import LOOPBACK, free_port, wait_for_banner, wait_for_listener
from .postfix import PostfixServer
from .server import MailSetup
from .tls import TestCA

_TLSMGR = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"


def _postfix_user() -> pwd.struct_passwd:
    return pwd.getpwnam("postfix")


class SmtpSink:
    """`smtp-sink -d DIR/...` on loopback: a receiver that answers 250 to everything and
    writes each transaction (envelope as X-*-Args lines, then the message) to one file.
    `options` are more smtp-sink flags, e.g. ("-8",): do not announce 8BITMIME."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        port: int = 0,
        host: str = LOOPBACK,
        options: Sequence[str] = (),
    ) -> None:
        self.binary, self.host, self.options = binary, host, list(options)
        self.port = port or free_port()
        self.dumps = workdir / "sink-dumps"
        self.log = workdir / "sink.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        user = _postfix_user()
        self.dumps.mkdir(parents=True, exist_ok=True)
        os.chown(self.dumps, user.pw_uid, user.pw_gid)
        # -u: it refuses to run as root; -c: counters on stdout; 100: the listen backlog.
        argv = [self.binary, "-u", "postfix", "-d", f"{self.dumps}/%H%M%S.", "-c", *self.options]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, f"{self.host}:{self.port}", "100"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_for_banner(self.host, self.port, time.monotonic() + 60, alive=self.alive)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def transactions(self, marker: str = "") -> list[bytes]:
        """The dumped transactions (each a file) containing `marker`."""
        if not self.dumps.is_dir():
            return []
        found = [p.read_bytes() for p in sorted(self.dumps.rglob("*")) if p.is_file()]
        return [t for t in found if marker.encode() in t]

    def wait_for(self, marker: str, count: int = 1, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.transactions(marker)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)


class PostfixTlsReceiver(PostfixServer):
    """A private Postfix receiving with STARTTLS offered (RFC 3207), its certificate from the
    test CA; TLS sessions are logged and named in the Received header it adds."""

    name = "postfix-tls"

    def __init__(self, data_dir: Path, setup: MailSetup, ca: TestCA) -> None:
        super().__init__(data_dir, setup)
        self.ca = ca

    def _tls_lines(self) -> str:
        return (
            f"smtpd_tls_cert_file = {self.ca.server_cert}\n"
            f"smtpd_tls_key_file = {self.ca.server_key}\n"
            "smtpd_tls_security_level = may\n"
            "smtpd_tls_received_header = yes\n"
            "smtpd_tls_loglevel = 1\n"
        )

    def _write_config(self) -> None:
        super()._write_config()
        with (self.etc / "main.cf").open("a") as main:
            main.write(self._tls_lines())
        with (self.etc / "master.cf").open("a") as master:
            master.write(_TLSMGR)


class PostfixSubmission(PostfixTlsReceiver):
    """A private Postfix submission port (RFC 6409 style, like a provider's 587): STARTTLS is
    required before anything else, AUTH through Dovecot SASL, and mail only after AUTH."""

    name = "postfix-submission"

    def __init__(self, data_dir: Path, setup: MailSetup, ca: TestCA, sasl_socket: Path) -> None:
        super().__init__(data_dir, setup, ca)
        self.sasl_socket = sasl_socket

    def _tls_lines(self) -> str:
        return super()._tls_lines() + (
            "smtpd_sasl_type = dovecot\n"
            f"smtpd_sasl_path = {self.sasl_socket}\n"
            "smtpd_sasl_security_options = noanonymous\n"
            "smtpd_tls_auth_only = yes\n"
        )

    def _write_config(self) -> None:
        super()._write_config()
        master = self.etc / "master.cf"
        listener = f"{self.host}:{self.port} inet n - n - - smtpd"
        text = master.read_text()
        assert listener in text
        options = (
            " -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes"
            " -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
            " -o smtpd_relay_restrictions=permit_sasl_authenticated,reject"
        )
        master.write_text(text.replace(listener, listener + options, 1))


_DOVECOT_COMMON = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
listen = 127.0.0.1
disable_plaintext_auth = no
first_valid_uid = {uid}
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%d/%n allow_all_users=yes
}}
"""

_DOVECOT_LMTP = """\
protocols = lmtp
mail_location = maildir:{dir}/mail/%d/%n
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""

_DOVECOT_AUTH = """\
protocols = none
service auth {{
  unix_listener {socket} {{
    mode = 0666
  }}
}}
"""


class Dovecot(DovecotMaster):
    """A private Dovecot (`dovecot -c FILE`): `lmtp=True` serves LMTP on `port` delivering to
    `maildir(user, domain)`; else only the auth service on `auth_socket`. Mail and homes belong
    to the postfix user (any unprivileged account would do)."""

    def __init__(self, workdir: Path, *, lmtp: bool, users: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.lmtp = lmtp
        self.port = free_port()
        self.auth_socket = workdir / "auth"
        self.config = workdir / "dovecot.conf"
        self.users = users or {}

    def start(self) -> None:
        owner = _postfix_user()
        for sub in ("run", "state", "mail", "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("mail", "home"):
            os.chown(self.dir / sub, owner.pw_uid, owner.pw_gid)
        (self.dir / "passwd").write_text(
            "".join(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in self.users.items())
        )
        text = _DOVECOT_COMMON.format(dir=self.dir, uid=owner.pw_uid, gid=owner.pw_gid)
        if self.lmtp:
            text += _DOVECOT_LMTP.format(dir=self.dir, port=self.port)
        else:
            text += _DOVECOT_AUTH.format(socket=self.auth_socket)
        self.config.write_text(text)
        self._launch()  # the master daemonizes: its start-up errors go to a file
        deadline = time.monotonic() + 60
        if self.lmtp:
            wait_for_listener(LOOPBACK, self.port, deadline)
        else:
            while not self.auth_socket.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no dovecot auth socket:\n{self.log_text()}")
                time.sleep(0.05)

    def maildir(self, user: str, domain: str) -> Path:
        return self.dir / "mail" / domain / user
