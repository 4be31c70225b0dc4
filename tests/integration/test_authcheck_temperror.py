"""A temporary DNS error is a temporary answer (issue 14 item 2): when the sender's SPF record
or DKIM key cannot be fetched (the test DNS server answers SERVFAIL) and nothing else passes
DMARC, a p=reject domain's mail gets 451 4.4.3, not 550 (RFC 7208 §2.6.6 and §8.6, RFC 6376
§6.1.2, RFC 7489 §11.2). Once DNS answers again, the client's retry is judged for real."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue
from hato.authcheck import DkimAlgorithm, generate_key

KEY, KEY_TXT = generate_key(DkimAlgorithm.RSA_SHA256)
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    # SPF allows loopback for spf.test; dkim.test's SPF never allows it (only DKIM can pass).
    "spf.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.spf.test": {"TXT": ["v=DMARC1; p=reject"]},
    "dkim.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.dkim.test": {"TXT": ["v=DMARC1; p=reject"]},
    "s1._domainkey.dkim.test": {"TXT": [tuple(KEY_TXT[i : i + 250] for i in range(0, 999, 250))]},
}


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def hato(tmp_path: Path, dns: DnsTestServer) -> Iterator[CheckingHato]:
    setup = MailSetup(domains=(DomainSetup("dest.test", accept_any=True),))
    server = CheckingHato(tmp_path / "data", setup, dns.nameserver)
    server.start()
    yield server
    server.stop()


def _message(author: str, marker: str) -> bytes:
    return (
        f"From: <{author}>\r\nTo: <bob@dest.test>\r\nSubject: temperror\r\n"
        f"Message-ID: <{marker}@test>\r\n{maildir.MARKER_HEADER.decode()}: {marker}\r\n"
        "\r\nhello\r\n"
    ).encode()


def _wait_log(hato: HatoServer, *texts: str) -> str:
    """The first log line holding every text (the log is written just after the reply)."""
    deadline = time.monotonic() + 20
    while True:
        for line in hato.log_text().splitlines():
            if all(t in line for t in texts):
                return line
        assert time.monotonic() < deadline, f"no log line with {texts}:\n{hato.log_text()}"
        time.sleep(0.05)


def _send(hato: HatoServer, sender: str, message: bytes) -> tuple[int, str]:
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
        try:
            smtp.sendmail(sender, ["bob@dest.test"], message)
        except smtplib.SMTPDataError as error:
            text = error.smtp_error
            return error.smtp_code, text.decode() if isinstance(text, bytes) else text
    return 250, ""


def test_spf_servfail_under_dmarc_reject_is_451_then_accepted_on_retry(
    hato: CheckingHato, dns: DnsTestServer
) -> None:
    dns.servfail.add("spf.test")
    message = _message("news@spf.test", "spf-temp")
    code, text = _send(hato, "news@spf.test", message)
    assert (code, text[:5]) == (451, "4.4.3"), (code, text, hato.log_text()[-2000:])
    _wait_log(hato, "event=authcheck", "spf=temperror", "dmarc=temperror", "refuse=451")
    assert not maildir.all_messages(hato.mailboxes())
    # RFC 5321 §4.2.5: the client keeps the message and tries again; DNS has recovered.
    dns.servfail.clear()
    assert _send(hato, "news@spf.test", message) == (250, "")
    (found,) = maildir.wait_for_marker(hato.mailbox("bob", "dest.test"), "spf-temp")
    assert b"spf=pass" in found.read_bytes() and b"dmarc=pass" in found.read_bytes()


def test_dkim_key_servfail_under_dmarc_reject_is_451_not_550(
    hato: CheckingHato, dns: DnsTestServer
) -> None:
    dns.servfail.add("s1._domainkey.dkim.test")
    raw = _message("news@dkim.test", "dkim-temp")
    signed = dkim.sign(raw, b"s1", b"dkim.test", KEY, include_headers=[b"from"]) + raw
    code, text = _send(hato, "news@dkim.test", signed)
    assert (code, text[:5]) == (451, "4.4.3"), (code, text, hato.log_text()[-2000:])
    _wait_log(hato, "event=authcheck", "dkim=temperror", "dmarc=temperror", "refuse=451")
    # Without the DNS failure the same unaligned-SPF mail passes on its DKIM signature.
    dns.servfail.clear()
    assert _send(hato, "news@dkim.test", signed) == (250, "")
