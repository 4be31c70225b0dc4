"""Our DKIM signature is made after the milters (finish.py): a milter on the submission role
that edits our users' mail (a new body, SMFIR_REPLBODY, as a disclaimer milter does; a new
Subject, SMFIR_CHGHEADER) does not break it, as OpenDKIM signs last in Postfix.

Hato A (mx.sender.example, a `hato dkim keygen` key for sender.example) asks Sendmail's own
libmilter (peers/libmilter_filter.py) about its submission role's mail, and relays dest.example
to Hato B, which checks SPF, DKIM and DMARC against an in-process DNS server. Mail sent by
AUTH on A's submission port and by the real hato-sendmail arrives at B edited by the milter,
with a signature of sender.example that passes at B (dkim=pass, dmarc=pass) and with dkimpy
against the key record B's DNS serves.

A milter that rewrites From (SMFIR_CHGHEADER, as a mailing-list milter makes it the list's
address) has the message signed by the new From's domain when A holds its key (list.example:
dkim=pass and dmarc=pass at B for the new From), and never by a domain A holds no key for
(nokey.example: only the envelope sender's domain signs)."""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import filtering, maildir
from peers.authcheck import (
    A_HOSTNAME,
    B_HOSTNAME,
    Pair,
    logs,
    sender_and_checker,
)
from peers.milters import LibMilter
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles

from hato.server.tls import ensure_self_signed


@pytest.fixture
def pair(tmp_path: Path, libmilter: LibMilter) -> Iterator[Pair]:
    cert, key = ensure_self_signed(tmp_path / "tls", A_HOSTNAME)
    setup = MailSetup(
        domains=(DomainSetup("sender.example", users=("alice",)), DomainSetup("list.example")),
        submission=True,
        tls=TlsFiles(cert, key),
    )
    with sender_and_checker(
        tmp_path, setup, others=("list.example",), milter=libmilter.address
    ) as pair:
        yield pair


def _message(marker: str, words: str = "CHANGE-SUBJECT REPLACE-BODY") -> bytes:
    # CHANGE-SUBJECT and REPLACE-BODY: the libmilter's SMFIR_CHGHEADER and SMFIR_REPLBODY.
    return (
        "From: Alice <alice@sender.example>\r\nTo: <someone@dest.example>\r\n"
        f"Subject: lunch\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <{marker}@sender.example>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\n{words}\r\n"
    ).encode()


def _arrived(pair: Pair, marker: str) -> tuple[bytes, list[str], str]:
    """The message as B stored it, its unfolded fields and B's Authentication-Results."""
    box = pair.b.mailbox("someone", "dest.example")
    found = maildir.wait_for_marker(box, marker)
    assert len(found) == 1, f"not delivered by A to B:\n{logs(pair.a, pair.b)}"
    stored = found[0].read_bytes()
    fields = maildir.header_fields(stored)
    results = [f for f in fields if f.startswith(f"Authentication-Results: {B_HOSTNAME};")]
    assert len(results) == 1, fields
    return stored, fields, results[0]


def _signatures(fields: list[str]) -> list[str]:
    return [f for f in fields if f.lower().startswith("dkim-signature:")]


def _arrived_signed_and_passing(pair: Pair, marker: str) -> None:
    stored, fields, result = _arrived(pair, marker)
    head = filtering.head(stored)
    # The milter's edits reached B: they were made before the signature.
    assert b"Subject: changed by libmilter" in head, head
    assert stored.endswith(b"\r\n\r\nreplaced by libmilter\r\n"), stored[-200:]
    assert b"X-Libmilter: seen" in head, head
    signatures = _signatures(fields)
    assert len(signatures) == 1 and "d=sender.example" in signatures[0], fields
    assert re.search(r"\bdkim=pass\b[^;]*header\.d=sender\.example", result), result
    assert re.search(r"\bdmarc=pass\b", result), result
    record = pair.record.encode()
    assert dkim.verify(stored, dnsfunc=lambda name, timeout=5: record), fields


def test_submitted_mail_a_milter_edits_is_signed_as_it_leaves(pair: Pair) -> None:
    _submit(pair, _message("sub-1"))
    _arrived_signed_and_passing(pair, "sub-1")


def test_mail_from_hato_sendmail_a_milter_edits_is_signed_as_it_leaves(pair: Pair) -> None:
    done = pair.a.sendmail(["-f", "alice@sender.example", "someone@dest.example"],
                           _message("local-1"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    _arrived_signed_and_passing(pair, "local-1")


def _submit(pair: Pair, message: bytes) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(pair.a.host, pair.a.submission_port, timeout=60) as smtp:
        smtp.starttls(context=context)
        smtp.login("alice@sender.example", USER_PASSWORD)
        smtp.sendmail("alice@sender.example", ["someone@dest.example"], message)


def test_a_from_a_milter_rewrites_is_signed_by_its_new_domain(pair: Pair) -> None:
    # list.example has DMARC p=reject at B: a signature of sender.example (the From alice
    # sent) would not align with the new From, and B would refuse the message.
    _submit(pair, _message("list-1", "FROM-LIST"))
    done = pair.a.sendmail(["-f", "alice@sender.example", "someone@dest.example"],
                           _message("list-2", "FROM-LIST"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    for marker in ("list-1", "list-2"):
        _, fields, result = _arrived(pair, marker)
        assert "From: Team <team@list.example>" in fields, fields
        signatures = _signatures(fields)
        assert len(signatures) == 1 and "d=list.example;" in signatures[0], fields
        assert re.search(r"\bdkim=pass\b[^;]*header\.d=list\.example", result), result
        assert re.search(r"\bdmarc=pass\b[^;]*header\.from=list\.example", result), result


def test_a_from_rewritten_to_a_domain_we_hold_no_key_for_is_not_signed_by_it(pair: Pair) -> None:
    _submit(pair, _message("nokey-1", "FROM-NOKEY"))
    _, fields, result = _arrived(pair, "nokey-1")
    assert "From: <someone@nokey.example>" in fields, fields
    signatures = _signatures(fields)  # the envelope sender's domain's, never nokey.example's
    assert len(signatures) == 1 and "d=sender.example;" in signatures[0], fields
    assert not re.search(r"\bdmarc=pass\b", result), result
