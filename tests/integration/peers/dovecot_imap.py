"""A private Dovecot serving IMAP with the configuration `hato dovecot-config` prints: the
printed text as it is, followed only by what makes it private to the test (its own run, state
and log paths under the test's directory; later settings win in dovecot.conf)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .net import LOOPBACK, free_port, wait_for_listener

_PRIVATE = """
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
"""


class DovecotImap:
    def __init__(self, workdir: Path, printed_config: str) -> None:
        self.dir = workdir
        self.port = free_port()
        self.config = workdir / "dovecot.conf"
        self.printed = printed_config

    def start(self) -> None:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.printed + _PRIVATE.format(dir=self.dir))
        errors = self.dir / "start.err"
        with errors.open("wb") as err:  # the master daemonizes: its errors go to a file
            done = subprocess.run(
                ["dovecot", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                timeout=30,
            )
        if done.returncode != 0:
            raise RuntimeError(f"dovecot failed: {errors.read_text()}\n{self.log_text()}")
        wait_for_listener(LOOPBACK, self.port, time.monotonic() + 15)

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
