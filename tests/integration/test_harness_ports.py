"""The harness itself: a port free_port found free but taken by another process before
`hato serve` binds it (parallel tests on a loaded machine) does not fail the test. The first
start tries again on fresh ports; a server of someone else that greets on the taken port is
not mistaken for ours."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peers.hato import HatoServer
from peers.net import LOOPBACK, banner
from peers.server import MailSetup


@contextmanager
def _greeter(port: int) -> Iterator[None]:
    """Another program on `port`: it greets 220 every client and hangs up."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with client:
                client.sendall(b"220 someone.else ESMTP\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)


def test_a_taken_port_is_replaced_by_a_fresh_one(workdir: Path) -> None:
    server = HatoServer(workdir / "data", MailSetup())
    taken = server.port
    with _greeter(taken):
        server.start()
        try:
            assert server.port != taken
            assert banner(LOOPBACK, server.port).startswith(b"220 hato.test")
            assert "Address already in use" in server.log_text()
        finally:
            server.stop()
