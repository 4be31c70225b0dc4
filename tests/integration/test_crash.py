"""SIGKILL under load: every message answered 250 is delivered exactly once after a restart."""

from __future__ import annotations

import smtplib
import time

from peers import maildir
from peers.load import Load
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


def test_sigkill_mid_load_loses_nothing_and_duplicates_nothing(make_server: MakeServer) -> None:
    server = make_server()
    load = Load(server.host, server.port, "crash@client.test", "crash@example.org", _message)
    load.start(CLIENTS)
    assert load.wait_accepted(KILL_AFTER_ACCEPTED), "the load never got going"

    server.kill()  # mid-run: the clients are still sending
    time.sleep(0.3)
    accepted, attempted = load.halt()

    server.start()  # same data dir and port
    maildir.assert_each_once(server.mailboxes(), accepted, attempted, timeout=90, settle=2)
    # The server is healthy after the restart: a new message still gets through.
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        assert smtp.sendmail("crash@client.test", ["crash@example.org"], _message("after")) == {}
