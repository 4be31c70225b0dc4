"""Sender authentication end to end (issue 5, "Must show: end to end"): alice submits to Hato A,
which DKIM-signs her mail and relays it to Hato B; B checks SPF, DKIM and DMARC through an
in-process DNS server and records `spf=pass; dkim=pass; dmarc=pass` in its Authentication-Results.
The same message sent straight to B, unsigned, is refused by sender.example's DMARC p=reject."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import maildir
from peers.authcheck import CheckingHato, logs, signing_pair
from peers.hato import HatoServer
from peers.server import USER_PASSWORD, DomainSetup, MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue, hato_dns, txt_strings

SENDER = "alice@sender.example"
RECIPIENT = "someone@dest.example"
B_HOSTNAME = "mx.dest.example"


def _zone(dkim_txt: str) -> dict[str, dict[str, list[ZoneValue]]]:
    return {
        # A connects to B from loopback: that is sender.example's only permitted address.
        "sender.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.sender.example": {"TXT": ["v=DMARC1; p=reject"]},
        "hato._domainkey.sender.example": {"TXT": [txt_strings(dkim_txt)]},
    }


class SenderHato(HatoServer):
    """Hato A: signs for sender.example and relays mail for dest.example to Hato B."""

    def __init__(self, data_dir: Path, setup: MailSetup, relay: str, nameserver: str) -> None:
        super().__init__(data_dir, setup)
        self.relay = relay
        self.nameserver = nameserver

    def _config_text(self) -> str:
        # Inbound checks stay off (the harness default); DNS asks only the test server.
        return super()._config_text() + (
            hato_dns(self.nameserver) + "\n[delivery]\nallow_loopback = true\n"
            f'\n[[transport]]\ndomain = "dest.example"\nrelay = "{self.relay}"\n'
        )


@dataclass(frozen=True, slots=True)
class Pair:
    a: SenderHato
    b: CheckingHato
    test_ca: TestCA


@pytest.fixture
def pair(tmp_path: Path, test_ca: TestCA) -> Iterator[Pair]:
    with DnsTestServer({}) as dns:
        b = CheckingHato(  # Hato B: its own host name, inbound checks on
            tmp_path / "b",
            MailSetup(domains=(DomainSetup("dest.example", accept_any=True),)),
            dns.nameserver,
            B_HOSTNAME,
        )
        a = SenderHato(
            tmp_path / "a",
            MailSetup(
                domains=(DomainSetup("sender.example", users=("alice",)),),
                submission=True,
                tls=test_ca.tls_files(),
            ),
            f"{b.host}:{b.port}",
            dns.nameserver,
        )
        with signing_pair(a, b, dns, "sender.example", _zone):
            yield Pair(a, b, test_ca)


def _message(marker: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: end to end\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{marker}@sender.example>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhello from alice\r\n"
    ).encode()


def test_signed_submission_passes_spf_dkim_and_dmarc_at_the_next_hop(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with smtplib.SMTP(a.host, a.submission_port, timeout=30) as smtp:
        smtp.starttls(context=pair.test_ca.client_context())
        smtp.login(SENDER, USER_PASSWORD)
        refused = smtp.sendmail(SENDER, [RECIPIENT], _message("e2e-1"))
    assert refused == {}
    found = maildir.wait_for_marker(b.mailbox("someone", "dest.example"), "e2e-1")
    assert len(found) == 1, f"not delivered by A to B:\n{logs(a, b)}"
    fields = maildir.header_fields(found[0].read_bytes())

    # A's signature, made with the key of `hato dkim keygen` (selector "hato").
    signatures = [f for f in fields if f.lower().startswith("dkim-signature:")]
    assert len(signatures) == 1, fields
    tags = dict(
        (k.strip(), v.strip())
        for k, _, v in (t.partition("=") for t in signatures[0].split(":", 1)[1].split(";"))
        if k.strip()
    )
    assert tags["d"] == "sender.example" and tags["s"] == "hato", signatures[0]

    # It came through A (its relay hop), not around it.
    assert any(
        f.startswith("Received: from hato.test ") and f" by {B_HOSTNAME} " in f for f in fields
    ), fields

    # RFC 8601 §2.2: B's verdict, under B's authserv-id.
    results = [f for f in fields if f.startswith(f"Authentication-Results: {B_HOSTNAME};")]
    assert len(results) == 1, fields
    verdict = results[0]
    spf = re.search(r"\bspf=(\w+)[^;]*", verdict)
    dkim = re.search(r"\bdkim=(\w+)[^;]*", verdict)
    dmarc = re.search(r"\bdmarc=(\w+)[^;]*", verdict)
    assert spf and spf[1] == "pass", verdict
    assert "smtp.mailfrom=" in spf[0] and "sender.example" in spf[0], verdict
    assert dkim and dkim[1] == "pass", verdict
    assert "header.d=sender.example" in dkim[0], verdict
    assert dmarc and dmarc[1] == "pass", verdict
    assert "header.from=sender.example" in dmarc[0], verdict


def test_unsigned_mail_claiming_alice_sent_straight_to_b_is_refused_by_dmarc(pair: Pair) -> None:
    b = pair.b
    # The spoofer's From is alice's, its envelope another domain's (with MAIL FROM
    # alice@sender.example from loopback, SPF would pass aligned, and DMARC with it). No
    # signature, so RFC 7489 §4.2: neither identifier aligns -> fail -> p=reject -> 550 5.7.1.
    with (
        smtplib.SMTP(b.host, b.port, timeout=30) as smtp,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        smtp.sendmail("bounce@spoofer.example", [RECIPIENT], _message("spoof-1"))
    assert refused.value.smtp_code == 550, logs(b)
    error = refused.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    assert text.startswith("5.7.1"), text
    assert not maildir.all_messages(b.mailboxes()), "a DMARC-rejected message was delivered"
