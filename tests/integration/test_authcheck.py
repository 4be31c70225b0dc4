"""Sender authentication end to end (issue 5): the real server judges inbound mail with SPF,
DKIM and DMARC through an in-process DNS server, and DKIM-signs what its users send."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.hato import HatoServer, hato_binary
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import (
    ArcStatus,
    DkimAlgorithm,
    DkimStatus,
    generate_key,
    verify_arc,
    verify_dkim,
)
from hato.dns import DnsPythonResolver
from hato.server.tls import ensure_self_signed

SENDER_KEY, SENDER_TXT = generate_key(DkimAlgorithm.RSA_SHA256)


ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
    "s1._domainkey.sender.test": {"TXT": [txt_strings(SENDER_TXT)]},
    "spoofed.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.spoofed.test": {"TXT": ["v=DMARC1; p=reject"]},
    "relaxed.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "careful.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.careful.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "_dmarc.relaxed.test": {"TXT": ["v=DMARC1; p=none"]},
}


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def checking(tmp_path: Path, dns_server: DnsTestServer) -> Iterator[CheckingHato]:
    cert, key = ensure_self_signed(tmp_path / "tls", "hato.test")
    setup = MailSetup(
        domains=(DomainSetup("example.org", users=("alice", "bob")),),
        submission=True,
        tls=TlsFiles(cert, key),
    )
    server = CheckingHato(tmp_path / "data", setup, dns_server.nameserver)
    server.start()
    yield server
    server.stop()


def _message(sender: str, marker: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <bob@example.org>\r\nSubject: auth test\r\n"
        f"Message-ID: <{marker}@test>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhello\r\n"
    ).encode()


def test_signed_aligned_mail_passes_spf_dkim_and_dmarc(checking: CheckingHato) -> None:
    raw = _message("news@sender.test", "pass-1")
    signature = dkim.sign(raw, b"s1", b"sender.test", SENDER_KEY, include_headers=[b"from"])
    with smtplib.SMTP(checking.host, checking.port, timeout=30) as smtp:
        smtp.sendmail("news@sender.test", ["bob@example.org"], signature + raw)
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "pass-1")
    header = found.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    results = header[header.index("Authentication-Results: hato.test;") :]
    assert "spf=pass" in results and "dkim=pass" in results and "dmarc=pass" in results


def test_forged_results_in_our_name_are_removed(checking: CheckingHato) -> None:
    forged = (
        b"Authentication-Results: HATO.TEST; dkim=pass; dmarc=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
    )
    with smtplib.SMTP(checking.host, checking.port, timeout=30) as smtp:
        smtp.sendmail(
            "a@relaxed.test", ["bob@example.org"], forged + _message("a@relaxed.test", "forged-1")
        )
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "forged-1")
    text = found.read_bytes().decode()
    assert "HATO.TEST; dkim=pass" not in text  # the forgery is gone...
    assert "Authentication-Results: other.example; spf=pass" in text  # ...others' stay
    assert text.count("Authentication-Results: hato.test;") == 1  # only our own verdict


def test_dmarc_reject_policy_refuses_a_spoof_with_550_5_7_1(checking: CheckingHato) -> None:
    with (
        smtplib.SMTP(checking.host, checking.port, timeout=30) as smtp,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        smtp.sendmail("ceo@spoofed.test", ["bob@example.org"], _message("ceo@spoofed.test", "x"))
    assert refused.value.smtp_code == 550
    error = refused.value.smtp_error
    assert (error.decode() if isinstance(error, bytes) else error).startswith("5.7.1")
    assert not list(checking.mailbox("bob", "example.org").glob("new/*"))


def test_dmarc_quarantine_policy_delivers_to_the_junk_folder(checking: CheckingHato) -> None:
    with smtplib.SMTP(checking.host, checking.port, timeout=30) as smtp:
        smtp.sendmail("a@careful.test", ["bob@example.org"], _message("a@careful.test", "q-1"))
    box = checking.mailbox("bob", "example.org")
    (found,) = maildir.wait_for_marker(box / ".Junk", "q-1")
    assert "dmarc=fail" in found.read_bytes().decode()
    assert not list(box.glob("new/*"))  # not in the inbox


def test_failing_mail_of_a_p_none_domain_is_delivered_with_the_verdict(
    checking: CheckingHato,
) -> None:
    with smtplib.SMTP(checking.host, checking.port, timeout=30) as smtp:
        smtp.sendmail("a@relaxed.test", ["bob@example.org"], _message("a@relaxed.test", "none-1"))
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "none-1")
    text = found.read_bytes().decode()
    assert "spf=fail" in text and "dkim=none" in text and "dmarc=fail" in text


def test_mail_our_users_send_is_dkim_signed_and_verifies(
    checking: CheckingHato, dns_server: DnsTestServer
) -> None:
    keygen = subprocess.run(
        [hato_binary(), "dkim", "keygen", "example.org", "--config", str(checking.config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=checking.work,
    )
    record = keygen.stdout.splitlines()[-1]
    assert record.startswith("hato._domainkey.example.org. IN TXT ")
    txt = "".join(part for part in record.split('"')[1::2])
    zone = dict(ZONE)
    zone["hato._domainkey.example.org"] = {"TXT": [txt_strings(txt)]}
    dns_server.load(zone)
    checking.stop()
    checking.start()  # keys are loaded at start-up
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(checking.host, checking.submission_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login("alice@example.org", USER_PASSWORD)
        smtp.sendmail(
            "alice@example.org", ["bob@example.org"], _message("alice@example.org", "signed-1")
        )
    (found,) = maildir.wait_for_marker(checking.mailbox("bob", "example.org"), "signed-1")
    stored = found.read_bytes()
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=hato;" in stored

    resolver = DnsPythonResolver([dns_server.nameserver], timeout=HATO_DNS_TIMEOUT)
    (result,) = asyncio.run(verify_dkim(stored, resolver))
    assert result.status is DkimStatus.PASS, result
    tampered = stored.replace(b"hello", b"hullo")
    (bad,) = asyncio.run(verify_dkim(tampered, resolver))
    assert bad.status is DkimStatus.FAIL


class OtherHost(HatoServer):
    """A second server with a name of its own (the same name would be a mail loop)."""

    def _config_text(self) -> str:
        return (
            super()._config_text().replace('hostname = "hato.test"', 'hostname = "mx.remote.test"')
        )


class ForwardingHato(CheckingHato):
    """Checks inbound mail, and relays mail for remote.test to another server."""

    def __init__(self, data_dir: Path, setup: MailSetup, nameserver: str, relay: str) -> None:
        super().__init__(data_dir, setup, nameserver)
        self.relay = relay

    def _config_text(self) -> str:
        return (
            super()._config_text()
            + f'\n[[transport]]\ndomain = "remote.test"\nrelay = "{self.relay}"\n'
        )


def test_alias_forwarding_adds_an_arc_set_the_next_hop_can_verify(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    receiver = OtherHost(
        tmp_path / "remote", MailSetup(domains=(DomainSetup("remote.test", accept_any=True),))
    )
    receiver.start()
    setup = MailSetup(
        domains=(DomainSetup("example.org", aliases=(("fwd", ("carol@remote.test",)),)),)
    )
    forwarder = ForwardingHato(
        tmp_path / "data", setup, dns_server.nameserver, f"{receiver.host}:{receiver.port}"
    )
    forwarder._prepare()
    keygen = subprocess.run(
        [hato_binary(), "dkim", "keygen", "example.org", "--config", str(forwarder.config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=forwarder.work,
    )
    txt = "".join(keygen.stdout.splitlines()[-1].split('"')[1::2])
    zone = dict(ZONE)
    zone["hato._domainkey.example.org"] = {"TXT": [txt_strings(txt)]}
    dns_server.load(zone)
    forwarder.start()
    try:
        raw = _message("news@sender.test", "arc-1")
        signed = dkim.sign(raw, b"s1", b"sender.test", SENDER_KEY, include_headers=[b"from"])
        with smtplib.SMTP(forwarder.host, forwarder.port, timeout=30) as smtp:
            smtp.sendmail("news@sender.test", ["fwd@example.org"], signed + raw)
        box = receiver.mailbox("carol", "remote.test")
        (found,) = maildir.wait_for_marker(box, "arc-1")
        stored = found.read_bytes()
        assert b"ARC-Seal: " in stored and b"ARC-Authentication-Results: i=1;" in stored
        resolver = DnsPythonResolver([dns_server.nameserver], timeout=HATO_DNS_TIMEOUT)
        result = asyncio.run(verify_arc(stored, resolver))
        assert result.status is ArcStatus.PASS, result
    finally:
        forwarder.stop()
        receiver.stop()
