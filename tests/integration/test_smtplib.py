"""Python's smtplib against the real server: what a sender sees and what lands in the Maildir."""

from __future__ import annotations

import smtplib
import uuid

from peers import maildir
from peers.server import MailServer

SENDER = "sender@client.test"


def _message(marker: str, to: str, body: bytes = b"Hello from smtplib.\r\n") -> bytes:
    return (
        b"From: Sender <" + SENDER.encode() + b">\r\n"
        b"To: <" + to.encode() + b">\r\n"
        b"Subject: integration " + marker.encode() + b"\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <" + marker.encode() + b"@client.test>\r\n" + maildir.MARKER_HEADER + b": "
        b"" + marker.encode() + b"\r\n"
        b"\r\n" + body
    )


def test_a_sent_message_lands_byte_exact_in_the_maildir(mx: MailServer) -> None:
    marker = uuid.uuid4().hex
    sent = _message(marker, "bob@example.org", b"Line one.\r\n\r\n  indented\ttab\r\nlast\r\n")
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        refused = client.sendmail(SENDER, ["bob@example.org"], sent)
    assert refused == {}

    found = maildir.wait_for_marker(mx.mailbox("bob", "example.org"), marker)
    assert len(found) == 1, f"expected one delivery, got {found}"
    stored = found[0].read_bytes()
    prefix = maildir.split_added(stored, maildir.stored_form(mx.stores_crlf, sent))
    eol = b"\r\n" if mx.stores_crlf else b"\n"
    assert prefix.startswith(b"Return-Path: <" + SENDER.encode() + b">" + eol)
    assert b"Delivered-To: bob@example.org" + eol in prefix


def test_one_message_to_two_mailboxes_lands_once_in_each(mx: MailServer) -> None:
    marker = uuid.uuid4().hex
    sent = _message(marker, "carol@example.org")
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        assert client.sendmail(SENDER, ["carol@example.org", "alice@users.test"], sent) == {}
    for user, domain in (("carol", "example.org"), ("alice", "users.test")):
        box = mx.mailbox(user, domain)
        found = maildir.wait_for_marker(box, marker)
        assert len(found) == 1, f"{user}@{domain}: {found}"
        maildir.split_added(found[0].read_bytes(), maildir.stored_form(mx.stores_crlf, sent))


def test_replies_for_unknown_user_relay_and_size(mx: MailServer) -> None:
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.has_extn("size")
        # RFC 1870 §6.3: a declared SIZE over the limit is refused at MAIL FROM.
        code, text = client.mail(SENDER, [f"SIZE={2 * 1024 * 1024}"])
        assert (code, text[:5]) == (552, b"5.3.4"), (code, text)
        client.rset()
        assert client.mail(SENDER)[0] == 250
        code, text = client.rcpt("nobody@users.test")
        assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
        code, text = client.rcpt("someone@elsewhere.test")
        assert code // 100 == 5 and text[:5] == b"5.7.1", (code, text)
        if mx.name == "hato":
            assert code == 550
        # The session is still usable after refusals (RFC 5321 §4.1.1.3: other recipients go on).
        assert client.rcpt("alice@users.test")[0] == 250


def test_an_oversized_body_without_size_is_refused_and_not_delivered(mx: MailServer) -> None:
    marker = uuid.uuid4().hex
    big = (b"x" * 998 + b"\r\n") * 1100  # ~1.1 MB, over the 1 MiB limit
    sent = _message(marker, "dave@example.org", big)
    with smtplib.SMTP(mx.host, mx.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("dave@example.org")[0] == 250
        try:
            code, text = client.data(sent)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, str(exc.smtp_error).encode()
    # RFC 5321 §4.5.3.1.10 / RFC 1870: too much mail data is a 552.
    assert code == 552, (code, text)
    small = _message(uuid.uuid4().hex, "dave@example.org")
    with smtplib.SMTP(mx.host, mx.port, timeout=30) as client:
        assert client.sendmail(SENDER, ["dave@example.org"], small) == {}
    box = mx.mailbox("dave", "example.org")
    maildir.wait_for_count(box, 1, timeout=20)
    assert maildir.find_marker(maildir.messages(box), marker) == []
