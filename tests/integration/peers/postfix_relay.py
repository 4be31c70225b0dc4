"""A private Postfix as a home server behind OP25B: it accepts mail on its own loopback port and
relays everything through Hato's submission port, with STARTTLS required and SASL credentials
(`relayhost = [127.0.0.1]:PORT`). Nothing of the system's /etc/postfix is used.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from .postfix import _MASTER_CF, PostfixServer
from .server import MailSetup

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {log}
myhostname = home.test
mydomain = home.test
myorigin = home.test
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_forbid_bare_newline = yes
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_dns_support_level = disabled
relayhost = [{relay_host}]:{relay_port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = inline:{{ [{relay_host}]:{relay_port}={user}:{password} }}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
"""

_TLSMGR = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"


class PostfixRelay(PostfixServer):
    """Postfix that takes mail from 127.0.0.0/8 on `port` and relays it all to `relay_port`."""

    name = "postfix-relay"

    def __init__(
        self,
        data_dir: Path,
        relay_host: str,
        relay_port: int,
        ca: Path,
        user: str,
        password: str,
    ) -> None:
        super().__init__(data_dir, MailSetup())
        self.relay_host, self.relay_port = relay_host, relay_port
        self.ca, self.user, self.password = ca, user, password

    def _write_config(self) -> None:
        owner = pwd.getpwnam("postfix")
        for sub in ("etc", "queue", "data"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir / "data", owner.pw_uid, owner.pw_gid)
        self._log.touch()
        os.chown(self._log, owner.pw_uid, owner.pw_gid)
        (self.etc / "main.cf").write_text(
            _MAIN_CF.format(
                queue=self.data_dir / "queue",
                data=self.data_dir / "data",
                log=self._log,
                host=self.host,
                relay_host=self.relay_host,
                relay_port=self.relay_port,
                user=self.user,
                password=self.password,
                ca=self.ca,
            )
        )
        # The smtp client needs tlsmgr for TLS (session cache, entropy).
        master = _MASTER_CF.format(host=self.host, port=self.port) + _TLSMGR
        (self.etc / "master.cf").write_text(master)
        self._written = True
