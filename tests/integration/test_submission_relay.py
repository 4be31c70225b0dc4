"""Open-relay probes against the real server: on mx, and on submission without AUTH.

Every classic trick (RFC 5321 §3.6.1 forbids relaying for strangers; §4.1.1.3 / Appendix C on
source routes; RFC 2505 §2 lists percent hack, "!" paths, quoted local parts) must either be
refused with a 5xx, or be accepted only as a local address of our own domain and land in a
local Maildir, never queued for another domain.
"""

from __future__ import annotations

import base64
import re
import smtplib
import time
import uuid
from pathlib import Path

import pytest
from peers import clients, maildir
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import USER_PASSWORD
from peers.tls import TestCA

# users.test has accounts only; example.org accepts any local part.
TRICKS = [
    "user%other.test@users.test",  # percent hack
    "user%other.test@example.org",
    "@users.test:user@other.test",  # source route
    "@example.org,@users.test:user@other.test",
    '"user@other.test"@users.test',  # quoted local part
    '"user@other.test"@example.org',
    "user@other.test@users.test",  # two "@"
    "user@other.test@example.org",
    "other.test!user@example.org",  # UUCP bang path
    "user!other.test@example.org",
    "user@other.test",  # plainly foreign
    "user@[192.0.2.1]",  # address literal
    "postmaster@[127.0.0.1]",
    "user@example.org.other.test",
    "user@other.test.",
]


# An addr-spec in example.org or users.test: a dot-atom or a quoted-string local part (RFC 5322
# §3.4.1), so the only unquoted "@" is the one before our domain.
_LOCAL_ADDRESS = r'(?:[^"@\s]+|"(?:[^"\\]|\\.)*")@(?:example\.org|users\.test)'


def _rcpt_on_mx(server: HatoServer, recipient: str) -> tuple[int, list[bytes]]:
    with RawSession(server.host, server.port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<stranger@client.test>")[0] == 250
        return session.command(f"RCPT TO:<{recipient}>".encode())


@pytest.mark.parametrize("recipient", TRICKS)
def test_mx_never_relays(shared_submission: HatoServer, recipient: str) -> None:
    server = shared_submission
    code, lines = _rcpt_on_mx(server, recipient)
    if code // 100 == 5:
        return
    # Accepted: then only as a local mailbox of one of our domains. Send it and look.
    assert code == 250, lines
    marker = uuid.uuid4().hex
    with smtplib.SMTP(server.host, server.port, "client.test", timeout=30) as client:
        message = clients.message("stranger@client.test", "x@example.org", marker)
        assert client.sendmail("stranger@client.test", [recipient], message) == {}
    deadline = time.monotonic() + 20
    found: list[Path] = []
    while not found and time.monotonic() < deadline:
        found = maildir.find_marker(maildir.all_messages(server.mailboxes()), marker)
        time.sleep(0.05)
    assert len(found) == 1, f"{recipient} accepted but not delivered locally:\n{lines}"
    relative = found[0].relative_to(server.mailboxes())
    assert relative.parts[0] in ("example.org", "users.test"), relative
    # The Delivered-To: it gets is still an address of our domain: a quoted local part stays
    # quoted (RFC 5322 §3.4.1), so nothing downstream can read it as user@other.test.
    head = found[0].read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    delivered_to = [
        line.removeprefix("Delivered-To: ")
        for line in head.split("\r\n")
        if line.startswith("Delivered-To: ")
    ]
    assert len(delivered_to) == 1, head
    assert re.fullmatch(_LOCAL_ADDRESS, delivered_to[0]), delivered_to[0]
    # Never queued for the other domain: no delivery attempt, no route look-up for it.
    assert _remote_attempts(server, "other.test") == [], _remote_attempts(server, "other.test")


def _remote_attempts(server: HatoServer, domain: str) -> list[str]:
    """Log lines of the queue or the outbound courier about a recipient in `domain`: whatever
    became of the attempt (deferred, failed for want of DNS, delivered), it shows there."""
    recipient = re.compile(rf"to=<[^<>]*@[^<>@]*{re.escape(domain)}>|domain={re.escape(domain)}\b")
    return [
        line
        for line in server.log_text().splitlines()
        if ("hato.queue:" in line or "hato.delivery" in line) and recipient.search(line)
    ]


@pytest.mark.parametrize("recipient", [*TRICKS, "alice@users.test"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_unauthenticated_submission_relays_nothing(
    shared_submission: HatoServer, test_ca: TestCA, recipient: str, tls: bool
) -> None:
    server = shared_submission
    with RawSession(server.host, server.submission_port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        if tls:
            assert session.command(b"STARTTLS")[0] == 220
            session.start_tls(test_ca.client_context())
            assert session.command(b"EHLO client.test")[0] == 250
        code, lines = session.command(b"MAIL FROM:<stranger@client.test>")
        # RFC 4954 §6 / RFC 3207 §4: 530 5.7.0, authentication (or TLS first) required.
        assert (code, lines[-1][4:9]) == (530, b"5.7.0"), lines
        code, lines = session.command(f"RCPT TO:<{recipient}>".encode())
        assert code // 100 == 5, lines
        code, lines = session.command(b"DATA")
        assert code // 100 == 5, lines


def test_implicit_tls_without_auth_relays_nothing(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    server = shared_submission
    with RawSession(server.host, server.submissions_port, tls=test_ca.client_context()) as s:
        assert s.reply()[0] == 220
        assert s.command(b"EHLO client.test")[0] == 250
        code, lines = s.command(b"MAIL FROM:<stranger@client.test>")
        assert (code, lines[-1][4:9]) == (530, b"5.7.0"), lines
        assert s.command(b"RCPT TO:<user@other.test>")[0] // 100 == 5


def test_after_auth_a_foreign_recipient_is_queued_not_delivered_locally(
    shared_submission: HatoServer, test_ca: TestCA
) -> None:
    """The opposite case, so the probes above can fail: with AUTH, relaying is allowed."""
    server = shared_submission
    marker = uuid.uuid4().hex
    with RawSession(server.host, server.submissions_port, tls=test_ca.client_context()) as s:
        assert s.reply()[0] == 220
        assert s.command(b"EHLO client.test")[0] == 250
        token = base64.b64encode(f"\0alice@users.test\0{USER_PASSWORD}".encode()).decode()
        assert s.command(f"AUTH PLAIN {token}".encode())[0] == 235
        assert s.command(b"MAIL FROM:<alice@users.test>")[0] == 250
        recipient = f"r{marker[:8]}@other.test"
        assert s.command(f"RCPT TO:<{recipient}>".encode())[0] == 250
        assert s.command(b"DATA")[0] == 354
        assert s.command(clients.message("alice@users.test", recipient, marker) + b".")[0] == 250
    # Queued for the other domain: the queue runner takes it up for outbound delivery (what
    # happens next, deferral or a bounce for want of DNS on loopback, is another room's).
    deadline = time.monotonic() + 20
    attempts: list[str] = []
    while not attempts and time.monotonic() < deadline:
        attempts = [a for a in _remote_attempts(server, "other.test") if recipient in a]
        time.sleep(0.05)
    assert attempts, server.log_text()
    assert maildir.find_marker(maildir.all_messages(server.mailboxes()), marker) == []
