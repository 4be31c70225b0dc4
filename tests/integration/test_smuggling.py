"""SMTP smuggling probes against the real process: a second message hidden behind a fake end of
data (`\\n.\\n`, `\\r.\\r\\n`, `\\n.\\r\\n`) must never be delivered (RFC 5321 §4.1.1.4: DATA ends
only at CRLF "." CRLF; §2.3.8: bare CR and bare LF are not line ends)."""

from __future__ import annotations

import smtplib
import time
import uuid

import pytest
from peers import maildir
from peers.net import RawSession
from peers.server import MailServer

FAKE_ENDS = {"LF.LF": b"\n.\n", "CR.CRLF": b"\r.\r\n", "LF.CRLF": b"\n.\r\n"}


def _probe(server: MailServer, fake_end: bytes, victim: str, smuggled: str, tag: str) -> list[int]:
    """Send one smuggling attempt; return every reply code seen after the payload."""
    codes: list[int] = []
    with RawSession(server.host, server.port, timeout=5) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<probe@client.test>")[0] == 250
        assert session.command(f"RCPT TO:<{victim}>".encode())[0] == 250
        assert session.command(b"DATA")[0] == 354
        session.send(
            b"From: <probe@client.test>\r\nSubject: probe\r\n\r\nfirst message"
            + fake_end
            + b"MAIL FROM:<evil@client.test>\r\n"
            + f"RCPT TO:<{smuggled}>\r\n".encode()
            + b"DATA\r\n"
            + b"From: <evil@client.test>\r\nSubject: smuggled\r\n"
            + maildir.MARKER_HEADER
            + f": smuggled-{tag}\r\n\r\nSMUGGLED\r\n.\r\n".encode()
            + b"QUIT\r\n"
        )
        try:
            while True:
                codes.append(session.reply()[0])
        except OSError:  # closed by the server, or no more replies within the timeout
            pass
    return codes


def _headers(path_bytes: bytes) -> bytes:
    return path_bytes.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]


@pytest.mark.parametrize("name", sorted(FAKE_ENDS))
def test_a_smuggled_message_is_never_delivered(mx: MailServer, name: str) -> None:
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    victim, smuggled = "victim@example.org", f"smuggled-{name.lower()}@example.org"
    codes = _probe(mx, FAKE_ENDS[name], victim, smuggled, tag)

    # A sentinel to the smuggled address, sent afterwards: once it is delivered, anything the
    # probe queued before it has had its chance to arrive too.
    sentinel = uuid.uuid4().hex
    message = (
        b"From: <sentinel@client.test>\r\nSubject: sentinel\r\n"
        + maildir.MARKER_HEADER
        + f": {sentinel}\r\n\r\nsentinel\r\n".encode()
    )
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as smtp:
        assert smtp.sendmail("sentinel@client.test", [smuggled], message) == {}
    local, domain = smuggled.split("@")
    assert maildir.wait_for_marker(mx.mailbox(local, domain), sentinel)
    time.sleep(1)

    delivered = maildir.all_messages(mx.mailboxes())
    assert maildir.markers(delivered).get(f"smuggled-{tag}", 0) == 0, f"replies {codes}"
    for path in delivered:
        head = _headers(path.read_bytes())
        if f"Delivered-To: {smuggled}".encode() in head:
            assert sentinel.encode() in head, f"smuggled delivery {path}; replies {codes}"
        assert b"Return-Path: <evil@client.test>" not in head, f"{path}; replies {codes}"
    assert mx.alive()
