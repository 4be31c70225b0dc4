"""Real milters for Hato's [[milter]] tests: rspamd's proxy worker in milter mode (Debian's
`rspamd`), on a private configuration (peers/rspamd.py) with the proxy on a loopback port of
its own, scanning itself (`self_scan`): it adds rspamd's `milter_headers` fields to clean mail
and refuses GTUBE with a reply code of its own."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from .net import LOOPBACK, free_port
from .rspamd import RspamdServer


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
