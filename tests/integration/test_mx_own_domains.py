"""A stranger on port 25 writing as one of our own users, to our own users (red team,
2026-12-08, docs/operations.md "Red team").

Before, `From: ceo@example.org` from anyone on port 25 was delivered to our users when
example.org published no DMARC record or `p=none` (RFC 7489 §6.6.3 step 5: no record, no
DMARC). Now a From in one of our domains (or our hostname, the From of our DSNs) must pass
aligned SPF or aligned DKIM as if the domain said `p=reject` (`[authcheck] own_domains`),
unless the client is a relay the admin trusts (`own_domains_relays`). Our own users' doors
(hato-sendmail, submission) are not port 25 and are not touched.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import DkimAlgorithm, generate_key

OUR_KEY, OUR_TXT = generate_key(DkimAlgorithm.RSA_SHA256)
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    # example.org (ours) publishes no DMARC record; own.test (ours) p=none.
    "_dmarc.own.test": {"TXT": ["v=DMARC1; p=none"]},
    "stranger.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},  # SPF passes, not aligned
    # Our bounce domain: SPF names the test client, aligned (relaxed) with example.org.
    "bounces.example.org": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "s1._domainkey.example.org": {"TXT": [txt_strings(OUR_TXT)]},
}
REFUSED = (550, b"5.7.1")
RELAY = "127.0.0.2"  # own_domains_relays; the other tests' client is 127.0.0.1


class OwnDomainsHato(CheckingHato):
    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace(
            "inbound = true", f'inbound = true\nown_domains_relays = ["{RELAY}/32"]', 1
        )


@pytest.fixture(scope="module")
def server() -> Iterator[CheckingHato]:
    path = Path(tempfile.mkdtemp(prefix="hato-it-own-"))
    path.chmod(0o755)
    with DnsTestServer(ZONE) as dns:
        setup = MailSetup(
            domains=(
                DomainSetup("example.org", users=("bob", "ceo")),
                DomainSetup("own.test", users=("boss",)),
            )
        )
        hato = OwnDomainsHato(path / "data", setup, dns.nameserver)
        hato.start()
        try:
            yield hato
        finally:
            hato.stop()
            shutil.rmtree(path, ignore_errors=True)


def _message(author: str, marker: str) -> bytes:
    return (
        f"From: <{author}>\r\nTo: <bob@example.org>\r\nSubject: own domains\r\n"
        f"Message-ID: <{marker}@test>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nwire the money\r\n"
    ).encode()


def _send(
    server: CheckingHato, mail_from: str, message: bytes, source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """(code, enhanced status) of the end of DATA, or of MAIL when it is refused."""
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.mail(mail_from)
        if code != 250:
            return code, text[:5]
        assert smtp.rcpt("bob@example.org")[0] == 250
        code, text = smtp.data(message)
        return code, text[:5]


def _delivered(server: CheckingHato, marker: str) -> bool:
    return bool(maildir.wait_for_marker(server.mailbox("bob", "example.org"), marker, 30))


def _not_delivered(server: CheckingHato, marker: str) -> bool:
    return maildir.find_marker(maildir.messages(server.mailbox("bob", "example.org")), marker) == []


@pytest.mark.parametrize(
    ("mail_from", "author"),
    [
        ("a@stranger.test", "ceo@example.org"),  # our domain, no DMARC record
        ("a@stranger.test", "boss@own.test"),  # our domain, p=none
        ("a@stranger.test", "CEO@Example.ORG."),  # another spelling of it
        ("", "MAILER-DAEMON@hato.test"),  # a bounce in our hostname's name
        ("", "ceo@example.org"),
    ],
)
def test_a_strangers_from_in_our_domain_is_refused(
    server: CheckingHato, mail_from: str, author: str
) -> None:
    marker = uuid.uuid4().hex
    assert _send(server, mail_from, _message(author, marker)) == REFUSED
    assert server.wait_for_log(r"event=authcheck .*own=fail.* refuse=550")
    assert _not_delivered(server, marker)


def test_aligned_spf_of_our_domain_passes(server: CheckingHato) -> None:
    # RFC 7489 §3.1.2 relaxed: bounces.example.org's SPF pass is aligned with example.org.
    marker = uuid.uuid4().hex
    assert _send(server, "x@bounces.example.org", _message("ceo@example.org", marker))[0] == 250
    assert _delivered(server, marker)


def test_our_own_dkim_signature_passes_through_a_forwarder(server: CheckingHato) -> None:
    # Mail of ours that a forwarder (SRS envelope, its own IP) sends back to us: our
    # DKIM signature survives and is aligned (RFC 7489 §3.1.1).
    marker = uuid.uuid4().hex
    raw = _message("ceo@example.org", marker)
    signed = dkim.sign(raw, b"s1", b"example.org", OUR_KEY, include_headers=[b"from"]) + raw
    assert _send(server, "SRS0=x=y=example.org=ceo@stranger.test", signed)[0] == 250
    assert _delivered(server, marker)
    # The same message with its body changed (a list's footer) no longer passes.
    tampered = signed.replace(b"wire the money", b"wire the money today")
    marker2 = uuid.uuid4().hex
    assert (
        _send(server, "a@stranger.test", tampered.replace(marker.encode(), marker2.encode()))[0]
        == 550
    )


def test_a_trusted_relay_may_use_our_domains(server: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    message = _message("ceo@example.org", marker)
    assert _send(server, "ceo@example.org", message, source=RELAY)[0] == 250
    assert _delivered(server, marker)
    # From anyone else, our domain in MAIL FROM is refused at MAIL already.
    assert _send(server, "ceo@example.org", message) == REFUSED


def test_hato_sendmail_from_our_domain_is_delivered(server: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    done = server.sendmail(
        ["-f", "ceo@example.org", "bob@example.org"], _message("ceo@example.org", marker)
    )
    assert done.returncode == 0, done.stderr
    assert _delivered(server, marker)
