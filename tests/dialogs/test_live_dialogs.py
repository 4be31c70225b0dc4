"""The same dialog format, replayed over TCP against the real `hato serve` process.

Scripts in tests/dialogs/live/ describe what a client sees from the whole server (recipient
checks, relay control, postmaster, smuggling over a real socket), with the integration setup:
example.org accepts any local part; users.test has only alice and load.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dialog_runner import DialogError, Expect, ExpectClosed, Send, parse_dialog
from peers.hato import HatoServer

LIVE = sorted((Path(__file__).parent / "live").glob("*.dialog"))
READ_TIMEOUT = 30.0  # a reply comes in milliseconds; a loaded CI machine can take seconds


@pytest.fixture(scope="module")
def server() -> Iterator[HatoServer]:
    with tempfile.TemporaryDirectory(prefix="hato-dialogs-") as tmp:
        hato = HatoServer(Path(tmp) / "data")
        hato.start()
        try:
            yield hato
        finally:
            hato.stop()


class LiveClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=READ_TIMEOUT)
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str | None:
        """The next reply line, or None once the server has closed the connection."""
        deadline = time.monotonic() + READ_TIMEOUT
        while b"\r\n" not in self.buffer:
            if self.closed:
                return None
            if time.monotonic() > deadline:
                raise DialogError("timed out waiting for a reply")
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def wait_closed(self) -> bool:
        try:
            while not self.closed:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                self.buffer += chunk
        except (TimeoutError, ConnectionResetError):
            return False
        return not self.buffer.strip() and self.closed


def run_live(text: str, host: str, port: int) -> None:
    dialog = parse_dialog(text)
    client = LiveClient(host, port)
    pending = b""
    try:
        for step in dialog.steps:
            if isinstance(step, Send):
                pending += step.data
                continue
            if pending:
                client.send(pending)
                pending = b""
            if isinstance(step, ExpectClosed):
                if not client.wait_closed():
                    raise DialogError(f"line {step.line_no}: expected the server to close")
                continue
            assert isinstance(step, Expect)
            got = client.line()
            if len(step.text) == 3 and step.text.isdigit():
                while got is not None and got.startswith(step.text + "-"):
                    got = client.line()
            if got is None or not got.startswith(step.text):
                raise DialogError(f"line {step.line_no}: expected {step.text!r}, got {got!r}")
    finally:
        client.sock.close()


def test_there_are_live_scripts() -> None:
    assert len(LIVE) >= 5


@pytest.mark.parametrize("path", LIVE, ids=[p.stem for p in LIVE])
def test_live_dialog(path: Path, server: HatoServer) -> None:
    run_live(path.read_text(encoding="utf-8"), server.host, server.port)
