"""Real milters for Hato's [[milter]] tests: rspamd's proxy worker in milter mode (Debian's
`rspamd`), on a private configuration (peers/rspamd.py) with the proxy on a loopback port of
its own, scanning itself (`self_scan`): it adds rspamd's `milter_headers` fields to clean mail
and refuses GTUBE with a reply code of its own; and a milter on Sendmail's libmilter itself
(libmilter_filter.py, through Debian's `python3-milter`) that refuses at RCPT and asks for
every modification; and Debian's `opendkim` in verify mode."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .hato import HatoServer
from .net import LOOPBACK, free_port
from .rspamd import RspamdServer
from .server import DomainSetup, MailSetup


class RspamdMilter(RspamdServer):
    """A private rspamd whose proxy worker speaks the milter protocol on `milter_port`."""

    name = "rspamd-milter"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.milter_port = free_port()

    @property
    def milter_address(self) -> str:
        return f"inet:{LOOPBACK}:{self.milter_port}"

    def _write_config(self) -> Path:
        config = super()._write_config()
        with config.open("a") as out:
            out.write(
                f"""
worker "rspamd_proxy" {{
  bind_socket = "{LOOPBACK}:{self.milter_port}";
  milter = yes;
  timeout = 60s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
}}
"""
            )
        return config

    def start(self, timeout: float = 180.0) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while True:  # the proxy binds with the other workers; wait until it accepts
            try:
                socket.create_connection((LOOPBACK, self.milter_port), timeout=2).close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    text = self.log_text()[-2000:]
                    raise RuntimeError(f"rspamd's proxy not listening: {text}") from exc
                time.sleep(0.1)


LIBMILTER_SCRIPT = Path(__file__).with_name("libmilter_filter.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def libmilter_missing() -> str | None:
    """Why the libmilter peer cannot run here, or None."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import Milter"], capture_output=True, check=False)
    return None if probe.returncode == 0 else "python3-milter is not installed (.ci/run)"


class _MilterProcess:
    """A milter that runs as our child on a loopback port, its output in `NAME.out`."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"inet:{LOOPBACK}:{self.port}"

    def _spawn(self, argv: list[str], timeout: float) -> None:
        out = open(self.work / f"{self.name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + timeout
        while True:  # until the milter accepts
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_text()[-2000:]}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=2).close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not listening") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        path = self.work / f"{self.name}.out"
        return path.read_text(errors="replace") if path.exists() else ""


class LibMilter(_MilterProcess):
    """libmilter_filter.py (Sendmail's libmilter through Debian's python3-milter) on a
    loopback port."""

    name = "libmilter"

    def __init__(self, work: Path, connect: str = "") -> None:
        super().__init__(work)
        self.connect = connect  # "reject" or "tempfail": every connection at SMFIC_CONNECT

    def start(self, timeout: float = 60.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        argv = [SYSTEM_PYTHON, "-I", str(LIBMILTER_SCRIPT), str(self.port)]
        self._spawn(argv + ([self.connect] if self.connect else []), timeout)


class OpenDkim(_MilterProcess):
    """Debian's `opendkim` in verify mode (`Mode v`) on a loopback port, configured in its
    own directory, in the foreground; it adds its Authentication-Results to every message
    (`AlwaysAddARHeader`), under the authserv-id `opendkim.test`."""

    name = "opendkim"

    def start(self, timeout: float = 60.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "opendkim.conf"
        config.write_text(
            f"Mode v\nSocket inet:{self.port}@{LOOPBACK}\nAuthservID opendkim.test\n"
            "AlwaysAddARHeader yes\nBackground no\nSyslog no\n"
            f"PidFile {self.work}/opendkim.pid\nUserID {pwd.getpwuid(os.getuid()).pw_name}\n"
        )
        self._spawn(["opendkim", "-f", "-x", str(config)], timeout)


class MilteredHato(HatoServer):
    """Hato for dest.example (any local part) whose mx listener asks the milters at
    `addresses`, in order, each [[milter]] table with the `extra` lines; its /metrics on a
    port of its own."""

    def __init__(self, data_dir: Path, addresses: list[str], extra: str = "") -> None:
        super().__init__(
            data_dir, MailSetup(domains=(DomainSetup("dest.example", accept_any=True),))
        )
        self.addresses = addresses
        self.extra = extra
        self.metrics_port = self.own_port("metrics_port")

    def _config_text(self) -> str:
        milters = "".join(
            f'\n[[milter]]\naddress = "{address}"\n{self.extra}' for address in self.addresses
        )
        metrics = f'\n[metrics]\naddress = "{LOOPBACK}:{self.metrics_port}"\n'
        return super()._config_text() + metrics + milters

    def _metrics_text(self) -> str:
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as page:
            text: str = page.read().decode()
        return text

    def metric_lines(self, name: str) -> list[str]:
        return [x for x in self._metrics_text().splitlines() if x.startswith(name + "{")]

    def metric(self, name: str, **labels: str) -> float:
        """The value of the /metrics sample `name` with (at least) `labels`; 0 if absent."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in self._metrics_text().splitlines():
            head, _, value = line.rpartition(" ")
            if head.startswith(name + "{") and all(w in head for w in wanted):
                total += float(value)
        return total
