"""One way in (issue 11): the doors without a listener are DKIM-signed as authenticated
submission is. Hato A (hostname mx.sender.example, a `hato dkim keygen` key for sender.example)
relays dest.example and nowhere.example to Hato B, which checks SPF, DKIM and DMARC against an
in-process DNS server.

- Mail given to the real hato-sendmail on A arrives at B signed by sender.example, and B's
  Authentication-Results say dkim=pass and dmarc=pass.
- Mail to nowhere.example is refused by B (not its domain: 5xx at RCPT), so A bounces it to
  alice; alice's mail came by hato-sendmail (local submission: our own user's), so the DSN,
  from MAILER-DAEMON@mx.sender.example, carries a signature of sender.example that verifies
  (dkimpy, against the key record B's DNS serves).
- Mail from outside, on A's port 25 without AUTH, to A's alias gone@sender.example, which
  forwards to nowhere.example: accepted, then refused by B, so A bounces it to the outside
  sender at dest.example (through B). That DSN returns what a stranger chose, so A does not
  sign it (queue/bounce.py "Signing", RFC 6376 §8); it still passes DMARC at B by SPF on
  A's HELO name (mx.sender.example's record).
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.authcheck import (
    A_HOSTNAME,
    B_HOSTNAME,
    Pair,
    logs,
    sender_and_checker,
)
from peers.server import DomainSetup, MailSetup


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    gone = ("gone", ("nobody@nowhere.example",))
    setup = MailSetup(domains=(DomainSetup("sender.example", users=("alice",), aliases=(gone,)),))
    relayed = ("dest.example", "nowhere.example")
    with sender_and_checker(tmp_path, setup, relayed=relayed) as pair:
        yield pair


def _message(marker: str, to: str) -> bytes:
    return (
        f"From: Alice <alice@sender.example>\r\nTo: <{to}>\r\nSubject: from cron\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{marker}@sender.example>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nbackup done\r\n"
    ).encode()


def _signature_domains(fields: list[str]) -> list[str]:
    found = (re.search(r"\bd=([^;\s]+)", f) for f in fields if f.lower().startswith("dkim-sig"))
    return [m[1] for m in found if m]


def test_mail_from_hato_sendmail_is_signed_and_passes_dkim_and_dmarc_at_the_next_hop(
    pair: Pair,
) -> None:
    a, b = pair.a, pair.b
    done = a.sendmail(
        ["-f", "alice@sender.example", "someone@dest.example"],
        _message("local-1", "someone@dest.example"),
    )
    assert done.returncode == 0, done.stderr
    found = maildir.wait_for_marker(b.mailbox("someone", "dest.example"), "local-1")
    assert len(found) == 1, f"not delivered by A to B:\n{logs(a, b)}"
    fields = maildir.header_fields(found[0].read_bytes())
    assert _signature_domains(fields) == ["sender.example"], fields
    results = [f for f in fields if f.startswith(f"Authentication-Results: {B_HOSTNAME};")]
    assert len(results) == 1, fields
    assert re.search(r"\bdkim=pass\b[^;]*header\.d=sender\.example", results[0]), results[0]
    assert re.search(r"\bdmarc=pass\b", results[0]), results[0]


def _wait_for(box: Path, needle: bytes, timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in maildir.messages(box) if needle in p.read_bytes()]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_a_bounce_from_our_server_carries_a_signature_that_verifies(pair: Pair) -> None:
    a, b = pair.a, pair.b
    done = a.sendmail(
        ["-f", "alice@sender.example", "nobody@nowhere.example"],
        _message("bounced-1", "nobody@nowhere.example"),
    )
    assert done.returncode == 0, done.stderr
    found = _wait_for(a.mailbox("alice", "sender.example"), b"MAILER-DAEMON@", 60)
    assert len(found) == 1, f"no bounce for alice:\n{logs(a, b)}"
    stored = found[0].read_bytes()
    fields = maildir.header_fields(stored)
    assert f"From: Mail Delivery System <MAILER-DAEMON@{A_HOSTNAME}>" in fields, fields
    # Our hostname's domain signs it (relaxed alignment with MAILER-DAEMON@mx.sender.example).
    assert _signature_domains(fields) == ["sender.example"], fields
    record = pair.record.encode()
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: record), fields


def test_a_bounce_of_mail_from_outside_is_not_signed(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:  # port 25's role: no AUTH
        client.sendmail("carol@dest.example", ["gone@sender.example"],
                        _message("outside-1", "gone@sender.example"))  # fmt: skip
    found = _wait_for(b.mailbox("carol", "dest.example"), b"MAILER-DAEMON@", 60)
    assert len(found) == 1, f"no bounce for carol:\n{logs(a, b)}"
    fields = maildir.header_fields(found[0].read_bytes())
    assert f"From: Mail Delivery System <MAILER-DAEMON@{A_HOSTNAME}>" in fields, fields
    assert _signature_domains(fields) == [], fields  # no DKIM-Signature by us
    results = [f for f in fields if f.startswith(f"Authentication-Results: {B_HOSTNAME};")]
    assert len(results) == 1, fields
    assert re.search(r"\bdkim=none\b", results[0]), results[0]
    assert re.search(r"\bdmarc=pass\b", results[0]), results[0]  # by SPF on the HELO name
