"""What Hato sends to a next hop that lacks SMTPUTF8 or 8BITMIME, and REQUIRETLS end to end
(issue 14 items 3 and 6): the real `hato serve`, mail submitted by smtplib (SMTPUTF8,
REQUIRETLS over STARTTLS), the MX from the test DNS server, and a scripted next hop that offers
or withholds SMTPUTF8, 8BITMIME, STARTTLS and REQUIRETLS.

- RFC 6531 §3.2: UTF-8 header fields never go raw to a server without SMTPUTF8: they go as
  RFC 2047 encoded words when that is lossless, else the sender gets a 5.6.7 DSN;
- RFC 6152 §3: an 8-bit body to a server without 8BITMIME goes as quoted-printable;
- RFC 8689: REQUIRETLS is offered only over TLS, taken only over TLS, passed on to a next hop
  that offers it over verified TLS, and bounced (5.7.30, content not returned) otherwise;
  `TLS-Required: No` lets mail go although the recipient's DANE policy would hold it.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import smtplib
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from peers import maildir
from peers.net import LOOPBACK, free_port
from peers.outbound_hato import SENDER, OutboundConfig, OutboundHato
from peers.outbound_peers import SmtpSink
from peers.outbound_scripted import ScriptedPeer, Transaction
from peers.server import USER_PASSWORD
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

RCPT = "bob@peer.test"
# The MX is "localhost": the test CA's server certificate names it, so verified TLS works.
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "peer.test": {"MX": [(10, "localhost")]},
    "localhost": {"A": ["127.0.0.1"]},
}
NO_8BITMIME = ("PIPELINING", "ENHANCEDSTATUSCODES")
WITH_SMTPUTF8 = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def peer_port() -> int:
    return free_port()


def _start(
    workdir: Path, ca: TestCA, dns: DnsTestServer, port: int, extra: str = ""
) -> OutboundHato:
    hato = OutboundHato(workdir / "data", ca, OutboundConfig(dns.nameserver, port, extra))
    hato.start()
    return hato


@pytest.fixture
def hato(
    workdir: Path, test_ca: TestCA, dns: DnsTestServer, peer_port: int
) -> Iterator[OutboundHato]:
    server = _start(workdir, test_ca, dns, peer_port)
    yield server
    server.stop()


def _server_tls(ca: TestCA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    return context


def _submit(hato: OutboundHato, body: bytes, options: list[str], rcpt: str = RCPT) -> None:
    """Alice's client: STARTTLS, AUTH, then MAIL with `options` (e.g. SMTPUTF8, REQUIRETLS)."""
    with smtplib.SMTP(hato.host, hato.submission_port, timeout=20) as smtp:
        smtp.starttls(context=hato.ca.client_context())
        smtp.login(SENDER, USER_PASSWORD)
        refused = smtp.sendmail(SENDER, [rcpt], body, mail_options=options)
        assert not refused, refused


def _message(
    marker: str, *, subject: str = "hello", extra: str = "", body: str = "Hi.\r\n"
) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{marker}@users.test>\r\nX-Test-Marker: {marker}\r\n{extra}\r\n{body}"
    ).encode()


def _delivered(peer: ScriptedPeer, marker: str) -> Transaction:
    [txn] = peer.wait_delivered(marker)
    return txn


def _bounce(hato: OutboundHato) -> tuple[EmailMessage, bytes]:
    found = maildir.wait_for_count(hato.mailbox("alice", "users.test"), 1, 20)
    assert found, hato.log_text()[-3000:]
    data = found[0].read_bytes()
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed, data


# ---- SMTPUTF8 (RFC 6531) ----


def test_utf8_subject_goes_as_encoded_words_to_a_hop_without_smtputf8(
    hato: OutboundHato, peer_port: int
) -> None:
    marker = uuid.uuid4().hex
    with ScriptedPeer(LOOPBACK, peer_port) as peer:
        _submit(hato, _message(marker, subject="Grüße aus Köln"), ["SMTPUTF8"])
        txn = _delivered(peer, marker)
    assert "SMTPUTF8" not in txn.mail_from
    assert txn.content.isascii(), txn.content[:600]
    got = email.message_from_bytes(txn.content, policy=email.policy.default)
    assert got["Subject"] == "Grüße aus Köln"  # RFC 2047 encoded words, decoded
    assert b"=?utf-8?" in txn.content


def test_utf8_subject_goes_raw_with_smtputf8_to_a_hop_that_offers_it(
    hato: OutboundHato, peer_port: int
) -> None:
    marker = uuid.uuid4().hex
    with ScriptedPeer(LOOPBACK, peer_port, keywords=WITH_SMTPUTF8) as peer:
        _submit(hato, _message(marker, subject="Grüße"), ["SMTPUTF8"])
        txn = _delivered(peer, marker)
    assert txn.mail_from.endswith(" SMTPUTF8") or " SMTPUTF8 " in txn.mail_from, txn.mail_from
    assert "Subject: Grüße\r\n".encode() in txn.content  # RFC 6532: as it was


def test_utf8_address_in_a_header_bounces_with_5_6_7(hato: OutboundHato, peer_port: int) -> None:
    marker = uuid.uuid4().hex
    # A UTF-8 mailbox in Cc: (RFC 6531) has no ASCII form: not sent, the sender is told.
    sent = _message(marker, extra="Cc: <jürgen@peer.test>\r\n")
    with ScriptedPeer(LOOPBACK, peer_port) as peer:
        _submit(hato, sent, ["SMTPUTF8"])
        hato.wait_event("failed", to=f"<{RCPT}>")
        assert peer.delivered() == []
    dsn, _ = _bounce(hato)
    status = list(dsn.iter_parts())[1].as_string()
    assert "Status: 5.6.7" in status, status


def test_hato_sendmail_utf8_subject_is_smtputf8_mail_too(
    hato: OutboundHato, peer_port: int
) -> None:
    # A local program cannot ask for SMTPUTF8; UTF-8 in its header section makes the message
    # SMTPUTF8 mail all the same (as Postfix's sendmail autodetects), so it is never sent raw.
    marker = uuid.uuid4().hex
    with ScriptedPeer(LOOPBACK, peer_port) as peer:
        sent = subprocess.run(
            [str(Path(sys.executable).with_name("hato-sendmail")), "-f", SENDER, RCPT],
            input=_message(marker, subject="Grüße").replace(b"\r\n", b"\n"),
            capture_output=True,
            env={**os.environ, "HATO_CONTROL_SOCKET": str(hato.data_dir / "control.sock")},
            timeout=30,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        txn = _delivered(peer, marker)
    assert txn.content.isascii(), txn.content[:600]
    got = email.message_from_bytes(txn.content, policy=email.policy.default)
    assert got["Subject"] == "Grüße"


# ---- 8BITMIME (RFC 6152) ----


def test_8bit_body_is_converted_for_a_hop_without_8bitmime(
    hato: OutboundHato, peer_port: int
) -> None:
    marker = uuid.uuid4().hex
    text = "Grüße, Zoë.\r\n.a dot line\r\n"
    mime = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    mime += "Content-Transfer-Encoding: 8bit\r\n"
    with ScriptedPeer(LOOPBACK, peer_port, keywords=NO_8BITMIME) as peer:
        _submit(hato, _message(marker, extra=mime, body=text), ["BODY=8BITMIME"])
        txn = _delivered(peer, marker)
    assert "BODY=8BITMIME" not in txn.mail_from
    assert txn.content.isascii(), txn.content[:600]
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in txn.content
    got = email.message_from_bytes(txn.content, policy=email.policy.default)
    assert isinstance(got, EmailMessage)
    assert got.get_content() == text  # the same text, CRLF line ends kept


def test_postfix_smtp_sink_without_8bitmime_gets_ascii_mime(
    require_peer: Callable[[str], str],
    workdir: Path,
    test_ca: TestCA,
    dns: DnsTestServer,
    peer_port: int,
) -> None:
    # Postfix's smtp-sink told not to announce 8BITMIME (-8; it never offers SMTPUTF8): a UTF-8
    # Subject and an 8-bit body arrive as encoded words and quoted-printable.
    sink = SmtpSink(require_peer("smtp-sink"), workdir / "sink", peer_port, options=("-8",))
    sink.start()
    try:
        hato = _start(workdir, test_ca, dns, peer_port)
        try:
            marker = uuid.uuid4().hex
            mime = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            sent = _message(marker, subject="Grüße", extra=mime, body="Zoë\r\n")
            _submit(hato, sent, ["SMTPUTF8", "BODY=8BITMIME"])
            found = sink.wait_for(marker)
        finally:
            hato.stop()
    finally:
        sink.stop()
    assert len(found) == 1, found
    dump = found[0]
    assert dump.isascii(), dump[:800]
    mail_args = next(line for line in dump.splitlines() if line.startswith(b"X-Mail-Args:"))
    assert b"SMTPUTF8" not in mail_args and b"8BITMIME" not in mail_args, mail_args
    message = dump[dump.index(b"Received: ") :] if b"Received: " in dump else dump
    got = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(got, EmailMessage)
    assert got["Subject"] == "Grüße"
    assert got["Content-Transfer-Encoding"] == "quoted-printable"
    assert got.get_content().strip() == "Zoë"  # the dump ends with an empty line


# ---- REQUIRETLS (RFC 8689) ----


def test_requiretls_is_offered_and_taken_only_over_tls(hato: OutboundHato) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=20) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("requiretls")
        code, text = smtp.mail("someone@remote.test", ["REQUIRETLS"])
        assert (code, text[:6]) == (530, b"5.7.10"), (code, text)
        smtp.rset()
        smtp.starttls(context=hato.ca.client_context())
        smtp.ehlo("client.test")
        assert smtp.has_extn("requiretls")
        assert smtp.mail("someone@remote.test", ["REQUIRETLS"])[0] == 250


def test_requiretls_is_passed_on_over_verified_tls(
    hato: OutboundHato, dns: DnsTestServer, peer_port: int, test_ca: TestCA
) -> None:
    dns.authenticated = True  # RFC 8689 §4.2.1 step 2: a DNSSEC-validated MX answer
    marker = uuid.uuid4().hex
    tls = _server_tls(test_ca)
    with ScriptedPeer(LOOPBACK, peer_port, tls=tls, tls_keywords=("REQUIRETLS",)) as peer:
        _submit(hato, _message(marker), ["REQUIRETLS"])
        txn = _delivered(peer, marker)
    assert txn.tls and txn.mail_from.endswith(" REQUIRETLS"), txn


@pytest.mark.parametrize("why", ["hop-lacks-requiretls", "mx-not-dnssec"])
def test_requiretls_that_cannot_be_met_bounces_5_7_30_without_the_content(
    hato: OutboundHato, dns: DnsTestServer, peer_port: int, test_ca: TestCA, why: str
) -> None:
    dns.authenticated = why != "mx-not-dnssec"
    keywords = () if why == "hop-lacks-requiretls" else ("REQUIRETLS",)
    marker = uuid.uuid4().hex
    tls = _server_tls(test_ca)
    with ScriptedPeer(LOOPBACK, peer_port, tls=tls, tls_keywords=keywords) as peer:
        _submit(hato, _message(marker, subject="secret figures"), ["REQUIRETLS"])
        hato.wait_event("failed", to=f"<{RCPT}>")
        assert peer.transactions == []  # not a byte of it went out
    dsn, data = _bounce(hato)
    status = list(dsn.iter_parts())[1].as_string()
    assert "Status: 5.7.30" in status, status
    if why == "hop-lacks-requiretls":
        assert "localhost does not offer REQUIRETLS" in " ".join(status.split()), status
    # RFC 8689 §5: the report does not return the message, not even its header section.
    assert b"secret figures" not in data and marker.encode() not in data
    assert len(list(dsn.iter_parts())) == 2


def test_tls_required_no_delivers_despite_the_dane_policy(
    workdir: Path, test_ca: TestCA, dns: DnsTestServer, peer_port: int
) -> None:
    # DANE-EE TLSA records that no certificate matches, and a next hop without STARTTLS: the
    # DANE policy holds the mail (RFC 7672 §2.2) unless the sender said TLS-Required: No.
    tlsa = (3, 1, 1, hashlib.sha256(b"not the key").digest())
    dns.load({**ZONE, f"_{peer_port}._tcp.localhost": {"TLSA": [tlsa]}})
    dns.authenticated = True
    hato = _start(workdir, test_ca, dns, peer_port, "dane = true\n")
    try:
        held, free = uuid.uuid4().hex, uuid.uuid4().hex
        with ScriptedPeer(LOOPBACK, peer_port) as peer:
            _submit(hato, _message(held), [])
            hato.wait_event("deferred", to=f"<{RCPT}>")
            _submit(hato, _message(free, extra="TLS-Required: No\r\n"), [])
            _delivered(peer, free)
            assert peer.delivered(held) == []
    finally:
        hato.stop()
