"""Other spellings of the same name on the real mx (issue 12, items 15 and 18).

A domain written in full-width letters (`ｕsers.test`) or in decomposed form (`bu\u0308cher.test`)
is the same domain as ours after the UTS #46 mapping: the own-domain spoof check must see it as
ours. An Authentication-Results field claiming our authserv-id as an absolute name (`hato.test.`)
is a forgery like any other (RFC 8601 §5). A Unicode HELO name in mail without SMTPUTF8 goes into
Received: as its A-label, never as raw 8-bit bytes (RFC 6532 §3)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import clients, maildir
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import DomainSetup, MailServer, MailSetup

SPOOF_REFUSED = (550, b"5.7.1")


@pytest.fixture(scope="module")
def idn_mx() -> Iterator[HatoServer]:
    """One server for the module's short dialogs: users.test and an IDN domain of ours."""
    path = Path(tempfile.mkdtemp(prefix="hato-it-idn-"))
    path.chmod(0o755)
    setup = MailSetup(
        domains=(
            DomainSetup("users.test", users=("alice",)),
            DomainSetup("bücher.test", accept_any=True),
        )
    )
    server = HatoServer(path / "data", setup)
    server.start()
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ehlo(server: MailServer, name: bytes = b"client.test") -> RawSession:
    session = RawSession(server.host, server.port)
    assert session.reply()[0] == 220
    assert session.command(b"EHLO " + name)[0] == 250
    return session


@pytest.mark.parametrize(
    "sender",
    [
        "alice@ｕsers.test",  # full-width u
        "alice@ＵＳＥＲＳ.ＴＥＳＴ",
        "alice@users\u3002test",  # ideographic full stop
        "x@bu\u0308cher.test",  # NFD
        "x@BÜCHER.test",
        "x@xn--bcher-kva.test",  # the A-label
    ],
)
def test_our_domain_in_another_spelling_is_refused_without_auth(
    idn_mx: MailServer, sender: str
) -> None:
    with _ehlo(idn_mx) as session:
        code, lines = session.command(f"MAIL FROM:<{sender}> SMTPUTF8".encode())
        assert (code, lines[-1][4:9]) == SPOOF_REFUSED, lines
        assert session.command(b"MAIL FROM:<friend@other.test> SMTPUTF8")[0] == 250


def test_a_domain_without_a_normal_form_is_refused(idn_mx: MailServer) -> None:
    with _ehlo(idn_mx) as session:
        # U+0378 is unassigned: IDNA2008 has no such label (RFC 5892 §2.6).
        code, lines = session.command("MAIL FROM:<x@a\u0378.test> SMTPUTF8".encode())
        assert code == 501, lines
        code, lines = session.command("EHLO a\u0378.test".encode())
        assert code == 501, lines


def test_forged_results_naming_us_as_an_absolute_name_are_removed(idn_mx: MailServer) -> None:
    marker = uuid.uuid4().hex
    forged = b"Authentication-Results: hato.test.; dkim=pass; dmarc=pass\r\n"
    with _ehlo(idn_mx) as session:
        assert session.command(b"MAIL FROM:<friend@other.test>")[0] == 250
        assert session.command(b"RCPT TO:<alice@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        body = forged + clients.message("friend@other.test", "alice@users.test", marker)
        assert session.command(body + b".")[0] == 250
    (found,) = maildir.wait_for_marker(idn_mx.mailbox("alice", "users.test"), marker)
    assert b"hato.test.; dkim=pass" not in found.read_bytes()


def test_a_unicode_helo_is_written_as_its_a_label(idn_mx: MailServer) -> None:
    marker = uuid.uuid4().hex
    with _ehlo(idn_mx, "Bücher.example".encode()) as session:
        assert session.command(b"MAIL FROM:<friend@other.test>")[0] == 250
        assert session.command(b"RCPT TO:<alice@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        sent = clients.message("friend@other.test", "alice@users.test", marker)
        assert session.command(sent + b".")[0] == 250
    (found,) = maildir.wait_for_marker(idn_mx.mailbox("alice", "users.test"), marker)
    head = found.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), head
    assert b"Received: from xn--bcher-kva.example (" in head, head
