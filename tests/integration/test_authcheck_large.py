"""Large mail on the real mx (issue "nobody sends as someone else"): past 10 MiB, where a
message is no longer checked whole in memory, SPF, DKIM and DMARC still decide.

Before, a message over 10 MiB skipped every check (log `authcheck-skipped`), so padding a
spoof of a p=reject domain past it got it delivered. Now its DKIM body hashes are computed
while it streams in and DMARC's policy applies as to a small message (RFC 7489 §6.6): a 12 MiB
spoof is refused 550 5.7.1, a 12 MiB message signed by the domain (by dkimpy with RSA, or by
Hato's own signer with Ed25519) is delivered with dkim=pass and dmarc=pass although SPF fails.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from peers import maildir
from peers.authcheck import CheckingHato
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import DkimAlgorithm, DkimSigner, SigningKey
from kit.clock import FakeClock

SIZE = 12 * 1024 * 1024
RSA_KEY = SigningKey(DkimAlgorithm.RSA_SHA256, rsa.generate_private_key(65537, 2048))
ED_KEY = SigningKey(DkimAlgorithm.ED25519_SHA256, ed25519.Ed25519PrivateKey.generate())
DMARC_REJECT = (550, b"5.7.1")


# 127.0.0.1 (the test client) is allowed by no SPF record here: only DKIM can align.
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "bank.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.bank.test": {"TXT": ["v=DMARC1; p=reject"]},
    "rsa._domainkey.bank.test": {"TXT": [txt_strings(RSA_KEY.dns_txt())]},
    "ed._domainkey.bank.test": {"TXT": [txt_strings(ED_KEY.dns_txt())]},
    "lenient.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    # A p=reject domain whose SPF allows the test client: unsigned mail passes by SPF alone.
    "trusted.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.trusted.test": {"TXT": ["v=DMARC1; p=reject"]},
}


@pytest.fixture(scope="module")
def checking() -> Iterator[CheckingHato]:
    path = Path(tempfile.mkdtemp(prefix="hato-it-large-"))
    path.chmod(0o755)
    with DnsTestServer(ZONE) as dns:
        setup = MailSetup(
            domains=(DomainSetup("example.org", users=("bob",)),), max_message_size=40 << 20
        )
        server = CheckingHato(path / "data", setup, dns.nameserver)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(path, ignore_errors=True)


def _message(marker: str) -> bytes:
    """A 12 MiB message from ceo@bank.test: text lines with runs of spaces and tabs (relaxed
    canonicalization has work to do) and trailing empty lines (both drop them)."""
    header = (
        b"From: CEO <ceo@bank.test>\r\nTo: bob@example.org\r\nSubject: quarterly report\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <" + marker.encode()
        + b"@bank.test>\r\n" + maildir.MARKER_HEADER + b": " + marker.encode() + b"\r\n\r\n"
    )  # fmt: skip
    line = b"Figures  for\tthe quarter:   0123456789 abcdefghij  ABCDEFGHIJ \t \r\n"
    body = line * (SIZE // len(line)) + b"the end\r\n\r\n\r\n"
    return header + body


def _dkimpy_signed(message: bytes) -> bytes:
    pem = RSA_KEY.private_pem()
    signature = dkim.sign(
        message,
        b"rsa",
        b"bank.test",
        pem,
        canonicalize=(b"relaxed", b"simple"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return bytes(signature) + message


def _hato_signed(message: bytes) -> bytes:
    signer = DkimSigner("bank.test", "ed", ED_KEY, FakeClock(1_700_000_000.0, 0.0))
    head, _, body = message.partition(b"\r\n\r\n")
    return signer.sign(head + b"\r\n", [body]) + message


def _send(server: HatoServer, message: bytes, mail_from: bytes) -> tuple[int, bytes]:
    with RawSession(server.host, server.port, timeout=120) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:" + mail_from)[0] == 250
        assert session.command(b"RCPT TO:<bob@example.org>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        code, lines = session.command(message + b".")
        return code, lines[-1][4:9]


def _delivered(server: HatoServer, marker: str) -> list[Path]:
    return maildir.find_marker(maildir.messages(server.mailbox("bob", "example.org")), marker)


def test_a_large_unsigned_spoof_of_a_p_reject_domain_is_refused(checking: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    message = _message(marker)
    assert len(message) > SIZE
    assert _send(checking, message, b"<a@lenient.test>") == DMARC_REJECT
    assert _delivered(checking, marker) == []


def test_a_large_spoof_with_a_signature_that_does_not_verify_is_refused(
    checking: CheckingHato,
) -> None:
    # Signed by the domain, then its body changed at the end (beyond the first 10 MiB).
    marker = uuid.uuid4().hex
    signed = _dkimpy_signed(_message(marker)).replace(b"the end\r\n", b"THE END\r\n")
    assert _send(checking, signed, b"<a@lenient.test>") == DMARC_REJECT
    assert _delivered(checking, marker) == []


@pytest.mark.parametrize("sign", [_dkimpy_signed, _hato_signed], ids=["dkimpy-rsa", "hato-ed25519"])
def test_a_large_message_signed_by_the_domain_passes_dkim_and_dmarc(
    checking: CheckingHato, sign: Callable[[bytes], bytes]
) -> None:
    marker = uuid.uuid4().hex
    signed = sign(_message(marker))
    assert _send(checking, signed, b"<bounces@bank.test>")[0] == 250
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), marker, 60)
    head = found.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    results = " ".join(re.sub(r"\r\n[ \t]+", " ", head).split())
    assert "spf=fail" in results, results
    assert "dkim=pass" in results and "header.d=bank.test" in results, results
    assert "dmarc=pass header.from=bank.test" in results, results


def test_a_large_unsigned_message_whose_spf_aligns_passes_dmarc(checking: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    message = _message(marker).replace(b"ceo@bank.test", b"ceo@trusted.test")
    assert _send(checking, message, b"<bounces@trusted.test>")[0] == 250
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), marker, 60)
    head = found.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    results = " ".join(re.sub(r"\r\n[ \t]+", " ", head).split())
    assert "spf=pass" in results and "dmarc=pass header.from=trusted.test" in results, results
