"""A private Dovecot serving IMAP with the configuration `hato dovecot-config` prints: the
printed text as it is, followed only by what makes it private to the test (its own run, state
and log paths under the test's directory; later settings win in dovecot.conf); the Hato whose
Maildirs it serves (`VmailHato`); and the master process handling every private Dovecot of the
tests shares (`DovecotMaster`: start, stop, log)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .hato import HatoServer
from .net import LOOPBACK, free_port, wait_for_listener
from .server import DomainSetup, MailSetup

OWNER = "nobody"  # any unprivileged account there is everywhere

_PRIVATE = """
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
"""


class DovecotMaster:
    """The master process of a private Dovecot: its files under `dir`, its configuration in
    `config` (written by the subclass before `_launch`)."""

    dir: Path
    config: Path

    def _launch(self) -> None:
        errors = self.dir / "start.err"
        # The master daemonizes (its children would hold a pipe open): its errors go to a file.
        with errors.open("wb") as err:
            done = subprocess.run(
                ["dovecot", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                timeout=30,
            )
        if done.returncode != 0:
            raise RuntimeError(f"dovecot failed: {errors.read_text()}\n{self.log_text()}")

    def stop(self) -> None:
        try:
            pid = int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""


class DovecotImap(DovecotMaster):
    """IMAP on `port` with the configuration `printed` (what `hato dovecot-config` printed)."""

    def __init__(self, workdir: Path, printed_config: str) -> None:
        self.dir = workdir
        self.port = free_port()
        self.config = workdir / "dovecot.conf"
        self.printed = printed_config

    def start(self) -> None:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.printed + _PRIVATE.format(dir=self.dir))
        self._launch()
        wait_for_listener(LOOPBACK, self.port, time.monotonic() + 60)

    @classmethod
    def for_hato(cls, hato: HatoServer, workdir: Path, extra: str = "") -> DovecotImap:
        """A Dovecot (not started) serving `hato`'s Maildirs on a port of its own, configured by
        `hato dovecot-config` for that port, then `extra`."""
        imap = cls(workdir, "")
        printed = hato.hato(
            "dovecot-config",
            "--listen",
            LOOPBACK,
            "--imap-port",
            str(imap.port),
            "--imaps-port",
            "0",
        )
        assert printed.returncode == 0, printed.stderr
        imap.printed = printed.stdout + extra
        return imap


class VmailHato(HatoServer):
    """Hato for alice@example.test whose Maildirs are outside its data directory (`vmail`,
    owned by OWNER), where a Dovecot serves them; `extra` is appended to its configuration."""

    def __init__(self, data_dir: Path, extra: str = "") -> None:
        super().__init__(
            data_dir, MailSetup(domains=(DomainSetup("example.test", users=("alice",)),))
        )
        self.vmail = data_dir.parent / "vmail"
        self.extra = extra

    def _config_text(self) -> str:
        return (
            super()._config_text()
            + f'\n[local]\nmailboxes = "{self.vmail}"\nmailbox_owner = "{OWNER}"\n'
            + self.extra
        )

    def mailbox(self, user: str, domain: str) -> Path:
        return self.vmail / domain / user
