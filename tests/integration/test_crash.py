"""SIGKILL under load: every message answered 250 is delivered exactly once after a restart."""

from __future__ import annotations

import smtplib
import threading
import time
import uuid

from peers import maildir
from peers.server import MakeServer

CLIENTS = 8
KILL_AFTER_ACCEPTED = 150


def _message(marker: str) -> bytes:
    return (
        b"From: <crash@client.test>\r\nTo: <crash@example.org>\r\nSubject: crash\r\n"
        + maildir.MARKER_HEADER
        + b": "
        + marker.encode()
        + b"\r\n\r\n"
        # RFC 5321 §4.5.3.1.6: text lines stay under 1000 octets; 4 KiB in 64 lines.
        + (b"0123456789abcdef" * 4 + b"\r\n") * 64
    )


class Load:
    """Concurrent smtplib clients recording which markers were sent and which got 250."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.attempted: set[str] = set()
        self.accepted: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def client(self, number: int) -> None:
        while not self.stop.is_set():
            try:
                with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        marker = f"{number}-{uuid.uuid4().hex}"
                        with self.lock:
                            self.attempted.add(marker)
                        # sendmail returns only after the final 250 to DATA.
                        smtp.sendmail("crash@client.test", ["crash@example.org"], _message(marker))
                        with self.lock:
                            self.accepted.add(marker)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)


def test_sigkill_mid_load_loses_nothing_and_duplicates_nothing(make_server: MakeServer) -> None:
    server = make_server()
    load = Load(server.host, server.port)
    threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(load.accepted) < KILL_AFTER_ACCEPTED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(load.accepted) >= KILL_AFTER_ACCEPTED, "the load never got going"

    server.kill()  # mid-run: the clients are still sending
    time.sleep(0.3)
    load.stop.set()
    for thread in threads:
        thread.join(timeout=20)
    with load.lock:
        accepted, attempted = set(load.accepted), set(load.attempted)

    server.start()  # same data dir and port
    maildir.assert_each_once(server.mailboxes(), accepted, attempted, timeout=90, settle=2)
    # The server is healthy after the restart: a new message still gets through.
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        assert smtp.sendmail("crash@client.test", ["crash@example.org"], _message("after")) == {}
