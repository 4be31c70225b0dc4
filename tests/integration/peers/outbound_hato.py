"""Hato as a sender for the outbound tests: the harness server with `[dns]`, `[delivery]` and any
extra config text (transports, a smarthost), mail handed in through its submission port, and
waits on its log lines and queue.

Mail enters as a user's submission (STARTTLS + AUTH as alice@users.test), the way a user's
client sends to another domain; a bounce comes back to alice's local Maildir.
"""

from __future__ import annotations

import re
import smtplib
import time
from dataclasses import dataclass
from pathlib import Path

from dnsserver import hato_dns

from .hato import HatoServer
from .maildir import MARKER_HEADER
from .server import USER_PASSWORD, MailSetup, submission_setup
from .tls import TestCA

SENDER = "alice@users.test"


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """What the outbound tests add to the harness config."""

    nameserver: str  # the DNS test server, "127.0.0.1:PORT"
    mx_port: int = 25  # the receiver's port: every MX host is tried on it
    extra: str = ""  # more TOML (e.g. [[transport]] or [smarthost] tables)


class OutboundHato(HatoServer):
    """Hato with submission listeners, the test DNS server and delivery to loopback allowed."""

    def __init__(
        self, data_dir: Path, ca: TestCA, outbound: OutboundConfig, setup: MailSetup | None = None
    ) -> None:
        super().__init__(data_dir, setup or submission_setup(ca.tls_files()))
        self.ca = ca
        self.outbound = outbound

    def _env(self) -> dict[str, str]:
        # OpenSSL's default trust store (what `ssl.create_default_context()` loads) is the
        # test CA only, so a verified smarthost or MX certificate is checked for real.
        return {**super()._env(), "SSL_CERT_FILE": str(self.ca.ca_cert)}

    def _config_text(self) -> str:
        o = self.outbound
        return (
            super()._config_text()
            + hato_dns(o.nameserver)
            # MX hosts on 127.0.0.1 would otherwise be a mail loop (RFC 5321 §5.1); the
            # receivers of the tests listen on loopback, on one port for every MX host.
            + f"\n[delivery]\nmx_port = {o.mx_port}\nallow_loopback = true\n"
            + "connect_timeout = 5\nattempt_timeout = 20\n"
            + o.extra
        )

    # --- handing mail in ---------------------------------------------------------------------

    def submit(self, recipients: list[str], body: bytes, sender: str = SENDER) -> None:
        """Send one message as alice through the submission port (RFC 6409); raises unless
        every recipient was accepted and DATA got 250 (the message is queued durably)."""
        with smtplib.SMTP(self.host, self.submission_port, timeout=20) as smtp:
            smtp.starttls(context=self.ca.client_context())
            smtp.login(SENDER, USER_PASSWORD)
            refused = smtp.sendmail(sender, recipients, body)
            assert not refused, refused

    # --- watching ----------------------------------------------------------------------------

    def events(self, name: str, **fields: str) -> list[str]:
        """The log lines of `event=NAME` whose key=value fields include `fields`."""
        found = []
        for line in self.log_text().splitlines():
            if f"event={name} " not in line and not line.endswith(f"event={name}"):
                continue
            if all(_has_field(line, key, value) for key, value in fields.items()):
                found.append(line)
        return found

    def wait_event(
        self, name: str, timeout: float = 60.0, count: int = 1, **fields: str
    ) -> list[str]:
        """Poll the log until `count` matching `event=NAME` lines are there; fail loudly else."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **fields)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline or not self.alive():
                tail = "\n".join(self.log_text().splitlines()[-60:])
                raise AssertionError(
                    f"no {count}x event={name} {fields} within {timeout} s "
                    f"(alive={self.alive()}); log tail:\n{tail}"
                )
            time.sleep(0.05)

    def flush(self) -> None:
        """Make deferred mail due now, as an admin would: `hato queue flush` (Postfix's
        `postqueue -f`). The first retry is otherwise minutes away (queue/schedule.py: 300 s, no
        config key). Through the control socket while the server runs; when `serve` offers no
        control socket, the honest fallback is stop, flush the store offline, start again (the
        due scan at start-up then takes the rows)."""
        done = self.hato("queue", "flush")
        if done.returncode == 0:
            return
        if "control socket does not answer" not in done.stderr:
            raise AssertionError(f"hato queue flush failed ({done.returncode}): {done.stderr}")
        self.stop()
        done = self.hato("queue", "flush")
        assert done.returncode == 0, f"offline hato queue flush: {done.stdout} {done.stderr}"
        self.start()


def _has_field(line: str, key: str, value: str) -> bool:
    return re.search(rf"(?:^|\s){re.escape(key)}={re.escape(value)}(?:\s|$)", line) is not None


def message(to: str, marker: str, body: bytes = b"Hello from Hato.\r\n") -> bytes:
    """A small RFC 5322 message from alice, carrying a marker header tests look for. It has
    its Date and Message-ID, so the submission server adds neither (RFC 6409 §8.2, §8.3) and
    the message arrives ending with exactly these bytes."""
    return (
        f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: outbound {marker}\r\n"
        f"Date: Mon, 07 Dec 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{marker}@users.test>\r\n".encode()
        + MARKER_HEADER
        + b": "
        + marker.encode()
        + b"\r\n\r\n"
        + body
    )
