"""DMARC's From on the real mx, read the way mail readers read it (issue 12, item 2).

RFC 7489 §6.6.1: a message with several From domains, in one From field or in several, is
checked with each of them as the Author Domain, and the strictest policy among the failing
ones applies. Before, two From fields (or a From the standard library's parser skipped or
stopped before) were a DMARC permerror, and a spoof of a p=reject domain was delivered.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue

# 127.0.0.1 (the test client) is allowed by neither domain's SPF: both fail DMARC.
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "lenient.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.lenient.test": {"TXT": ["v=DMARC1; p=none"]},
    "bank.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.bank.test": {"TXT": ["v=DMARC1; p=reject"]},
    # bücher.test allows the test client: its mail passes SPF, aligned with its From.
    "xn--bcher-kva.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.xn--bcher-kva.test": {"TXT": ["v=DMARC1; p=reject"]},
    # One of our own domains, which publishes p=reject (docs/submission.md).
    "_dmarc.own.test": {"TXT": ["v=DMARC1; p=reject"]},
}
DMARC_REJECT = (550, b"5.7.1")


@pytest.fixture(scope="module")
def checking() -> Iterator[CheckingHato]:
    path = Path(tempfile.mkdtemp(prefix="hato-it-from-"))
    path.chmod(0o755)
    with DnsTestServer(ZONE) as dns:
        setup = MailSetup(
            domains=(
                DomainSetup("example.org", users=("bob",)),
                DomainSetup("own.test", users=("ceo",)),
            )
        )
        server = CheckingHato(path / "data", setup, dns.nameserver)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(path, ignore_errors=True)


def _send(
    server: HatoServer, header: bytes, marker: str, mail_from: bytes = b"<a@lenient.test>"
) -> tuple[int, bytes]:
    message = (
        header + b"\r\nTo: bob@example.org\r\nSubject: from fields\r\n"
        + maildir.MARKER_HEADER + f": {marker}\r\n\r\nbody\r\n.".encode()
    )  # fmt: skip
    with RawSession(server.host, server.port, timeout=30) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:" + mail_from)[0] == 250
        assert session.command(b"RCPT TO:<bob@example.org>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        code, lines = session.command(message)
        return code, lines[-1][4:9]


@pytest.mark.parametrize(
    "header",
    [
        b"From: <a@lenient.test>\r\nFrom: <ceo@bank.test>",  # two From fields
        b"From: <ceo@bank.test>\r\nFrom: <a@lenient.test>",
        b"From: <a@lenient.test>, <ceo@bank.test>",  # two domains in one field
        b"From: Team: a@lenient.test, ceo@bank.test;",
        b"From : <ceo@bank.test>",  # obsolete syntax, skipped by compat32
        b"no colon here\r\nFrom: <ceo@bank.test>",  # compat32 stops at this line
        "X-é: y\r\nFrom: <ceo@bank.test>".encode(),
        b"From: <x@[192.0.2.1]>, <ceo@bank.test>",  # a bad domain beside it
        b"From: <ceo@own.test>",  # a stranger on port 25 as one of our own users
    ],
)
def test_a_p_reject_domain_among_the_from_domains_is_refused(
    checking: CheckingHato, header: bytes
) -> None:
    marker = uuid.uuid4().hex
    assert _send(checking, header, marker) == DMARC_REJECT
    assert (
        maildir.find_marker(maildir.messages(checking.mailbox("bob", "example.org")), marker) == []
    )


@pytest.mark.parametrize(
    "header",
    [
        # RFC 2047 §5: an encoded-word is never an address, but readers decode it and show
        # "ceo@bank.test"; no domain for DMARC to judge: it was delivered, dmarc=permerror.
        b"From: =?utf-8?q?ceo=40bank.test?=",
        b"From: =?utf-8?b?Y2VvQGJhbmsudGVzdA==?=",
        b'From: "ceo@bank.test" <>',  # a name that reads as an address, and no address
        b"From: Bank: ;",  # an empty group
        b"From: " + b"(" * 600 + b"ceo@bank.test",  # comments nested past the parser's depth
        b"Reply-To: <ceo@bank.test>",  # no From at all (RFC 5322 §3.6: it is required)
    ],
)
def test_a_from_with_no_author_domain_is_refused(checking: CheckingHato, header: bytes) -> None:
    marker = uuid.uuid4().hex
    with RawSession(checking.host, checking.port, timeout=30) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<a@lenient.test>")[0] == 250
        assert session.command(b"RCPT TO:<bob@example.org>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        marked = maildir.MARKER_HEADER + f": {marker}\r\n\r\nx\r\n.".encode()
        code, lines = session.command(header + b"\r\nSubject: x\r\n" + marked)
        assert (code, lines[-1][4:9]) == DMARC_REJECT, lines
        assert b"From" in lines[-1], lines
        assert session.command(b"NOOP")[0] == 250  # the session goes on
    assert checking.wait_for_log(r"event=authcheck .*dmarc=permerror.* refuse=550")
    box = checking.mailbox("bob", "example.org")
    assert maildir.find_marker(maildir.messages(box), marker) == []


def test_a_from_naming_more_domains_or_text_than_dmarc_judges_is_refused(
    checking: CheckingHato,
) -> None:
    # Each From domain costs DMARC one or two DNS look-ups: 40 of them in a field (a 256 KiB
    # header section holds thousands) were all looked up, for one message of a stranger's.
    marker = uuid.uuid4().hex
    header = b"From: " + b", ".join(b"a@d%d.flood.test" % n for n in range(40))
    code, text = _send(checking, header, marker)
    assert (code, text) == DMARC_REJECT
    assert checking.wait_for_log(r"event=authcheck .*dmarc=permerror.* refuse=550")
    # Nor is a From longer than 4 KiB parsed: 256 KiB of groups took seconds of the loop.
    header = b"From: " + b"\r\n ".join([b"g:a@b.test;" * 50] * 340)  # folded: 187 KB
    assert _send(checking, header, uuid.uuid4().hex) == DMARC_REJECT
    assert checking.wait_for_log(r"event=authcheck .*dmarc=permerror.* refuse=550")
    # A few authors, each domain judged, are still fine (RFC 7489 §6.6.1).
    header = b"From: " + b", ".join(b"a@d%d.few.test" % n for n in range(10))
    assert _send(checking, header, uuid.uuid4().hex)[0] == 250


def test_each_from_domain_gets_its_own_verdict_line(checking: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    header = b"From: <a@lenient.test>\r\nFrom: <b@Lenient.TEST.>, <c@other.test>"
    assert _send(checking, header, marker)[0] == 250
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), marker)
    head = found.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    results = head[head.index("Authentication-Results: hato.test;") :].split("\r\n\r\n")[0]
    assert "dmarc=fail header.from=lenient.test" in " ".join(results.split())
    assert "dmarc=none header.from=other.test" in " ".join(results.split())


def test_an_idn_sender_aligns_in_any_spelling(checking: CheckingHato) -> None:
    # MAIL FROM names the domain in U-labels (RFC 6531), From in another spelling of it:
    # one domain after the UTS #46 mapping, so SPF's pass is aligned (RFC 7489 §3.1.2).
    marker = uuid.uuid4().hex
    header = "From: <ceo@BÜCHER.test>".encode()
    mail_from = "<ceo@bücher.test> SMTPUTF8".encode()
    assert _send(checking, header, marker, mail_from)[0] == 250
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), marker)
    results = " ".join(found.read_bytes().split(b"\r\n\r\n", 1)[0].decode().split())
    assert "spf=pass" in results and "dmarc=pass header.from=xn--bcher-kva.test" in results
