"""Outbound delivery to real receivers (issue 4), each a private Debian peer on loopback:

- a Postfix MX offering STARTTLS: Hato uses it (opportunistic TLS, RFC 3207) and the message
  lands byte-exact in Postfix's Maildir, its Received header saying "using TLS";
- Dovecot LMTP (RFC 2033) as a `[[transport]]`: the message lands byte-exact in Dovecot's Maildir;
- a Postfix submission port as `[smarthost]`: STARTTLS, AUTH against Dovecot SASL, relayed to
  Postfix's Maildir (how a server behind OP25B sends at all).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.outbound_peers import Dovecot, PostfixSubmission, PostfixTlsReceiver
from peers.server import DomainSetup, MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "pf.test": {"MX": [(10, "mx.pf.test")]},
    "mx.pf.test": {"A": ["127.0.0.1"]},
    # The smarthost is named by a host name that its certificate carries.
    "localhost": {"A": ["127.0.0.1"]},
}
POSTFIX_DOMAINS = MailSetup(domains=(DomainSetup("pf.test", users=("bob",)),))
SMARTHOST_USER, SMARTHOST_PASSWORD = "relay-user@users.test", "relay-secret-4711"


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def postfix_peer(require_peer: Callable[[str], str]) -> None:
    require_peer("postfix")


def _hato(workdir: Path, ca: TestCA, config: OutboundConfig) -> OutboundHato:
    hato = OutboundHato(workdir / "hato", ca, config)
    hato.start()
    return hato


def _one_delivered(root: Path, marker: str, sent: bytes, logs: Callable[[], str]) -> bytes:
    found = maildir.wait_for_marker(root, marker)
    assert len(found) == 1, logs()
    stored = found[0].read_bytes()
    # Byte-exact: the receiver's and Hato's added header lines, then what alice sent (with
    # LF line ends: Postfix and Dovecot store messages with the local convention).
    return maildir.split_added(stored, maildir.stored_form(False, sent))


def test_postfix_mx_with_starttls(
    postfix_peer: None, workdir: Path, test_ca: TestCA, dns: DnsTestServer
) -> None:
    postfix = PostfixTlsReceiver(workdir / "postfix", POSTFIX_DOMAINS, test_ca)
    postfix.start()
    try:
        hato = _hato(workdir, test_ca, OutboundConfig(dns.nameserver, postfix.port))
        try:
            marker = uuid.uuid4().hex
            sent = message("bob@pf.test", marker, b"Line one.\r\n.dot line\r\n\r\nEnd.\r\n")
            hato.submit(["bob@pf.test"], sent)
            added = _one_delivered(
                postfix.mailbox("bob", "pf.test"),
                marker,
                sent,
                lambda: hato.log_text()[-3000:] + postfix.log_text()[-3000:],
            )
            hato.wait_event("delivered", to="<bob@pf.test>")
        finally:
            hato.stop()
    finally:
        postfix.stop()
    # Postfix's own word that the session was encrypted (smtpd_tls_received_header, and
    # smtpd_tls_loglevel = 1's "TLS connection established" line).
    assert b"using TLS" in added, added
    assert b"from hato.test" in added, added
    assert "Anonymous TLS connection established from" in postfix.log_text() or (
        "TLS connection established from" in postfix.log_text()
    )


def test_postfix_mx_takes_several_messages_on_one_connection(
    postfix_peer: None, workdir: Path, test_ca: TestCA, dns: DnsTestServer
) -> None:
    # Connection reuse with a real receiver: three messages one after another on one
    # connection, each reuse's RSET pipelined with its MAIL (RFC 2920 §3.1), which Postfix
    # (it offers PIPELINING) takes without complaint. A long idle time: a loaded machine's
    # pauses between the messages must not close the connection.
    postfix = PostfixTlsReceiver(workdir / "postfix", POSTFIX_DOMAINS, test_ca)
    postfix.start()
    try:
        config = OutboundConfig(dns.nameserver, postfix.port, "idle_timeout = 120\n")
        hato = _hato(workdir, test_ca, config)
        try:
            markers = [uuid.uuid4().hex for _ in range(3)]
            for n, marker in enumerate(markers, 1):
                hato.submit(["bob@pf.test"], message("bob@pf.test", marker, b"Hello.\r\n"))
                hato.wait_event("delivered", count=n, to="<bob@pf.test>")
            for marker in markers:
                found = maildir.wait_for_marker(
                    postfix.mailbox("bob", "pf.test"), marker, timeout=20
                )
                assert len(found) == 1, hato.log_text()[-3000:]
        finally:
            hato.stop()  # QUITs the pooled connection: Postfix logs its summary
    finally:
        postfix.stop()
    log = postfix.log_text()
    # smtpd's summary of each session that carried mail (the others: the harness's probes).
    summary = [line for line in log.splitlines() if "disconnect from" in line and "mail=" in line]
    assert len(summary) == 1, log[-3000:]
    assert " mail=3 rcpt=3 " in summary[0] and " rset=2 " in summary[0], summary
    assert "pipelining" not in log  # "improper command pipelining" would be a complaint


def test_dovecot_lmtp_transport(workdir: Path, test_ca: TestCA, dns: DnsTestServer) -> None:
    dovecot = Dovecot(workdir / "dovecot", lmtp=True)
    dovecot.start()
    try:
        transport = f'\n[[transport]]\ndomain = "lmtp.test"\nlmtp = "127.0.0.1:{dovecot.port}"\n'
        hato = _hato(workdir, test_ca, OutboundConfig(dns.nameserver, extra=transport))
        try:
            marker = uuid.uuid4().hex
            sent = message("carol@lmtp.test", marker, b"8bit: gr\xc3\xbc\xc3\x9fe\r\n.\r\n..\r\n")
            hato.submit(["carol@lmtp.test"], sent)
            _one_delivered(
                dovecot.maildir("carol", "lmtp.test"),
                marker,
                sent,
                lambda: hato.log_text()[-3000:] + dovecot.log_text()[-3000:],
            )
            hato.wait_event("delivered", to="<carol@lmtp.test>")
        finally:
            hato.stop()
    finally:
        dovecot.stop()
    # A transport skips DNS: no MX question for the domain.
    assert dns.queries_for("lmtp.test", "MX") == 0


def test_smarthost_submission_with_auth(
    postfix_peer: None, workdir: Path, test_ca: TestCA, dns: DnsTestServer
) -> None:
    auth = Dovecot(workdir / "sasl", lmtp=False, users={SMARTHOST_USER: SMARTHOST_PASSWORD})
    auth.start()
    postfix = PostfixSubmission(workdir / "postfix", POSTFIX_DOMAINS, test_ca, auth.auth_socket)
    try:
        postfix.start()
        smarthost = (
            f'\n[smarthost]\nhost = "localhost"\nport = {postfix.port}\ntls = "starttls"\n'
            f'username = "{SMARTHOST_USER}"\npassword = "{SMARTHOST_PASSWORD}"\n'
        )
        hato = _hato(workdir, test_ca, OutboundConfig(dns.nameserver, extra=smarthost))
        try:
            marker = uuid.uuid4().hex
            sent = message("bob@pf.test", marker)
            hato.submit(["bob@pf.test"], sent)
            added = _one_delivered(
                postfix.mailbox("bob", "pf.test"),
                marker,
                sent,
                lambda: hato.log_text()[-3000:] + postfix.log_text()[-3000:],
            )
            hato.wait_event("delivered", to="<bob@pf.test>")
        finally:
            hato.stop()
    finally:
        postfix.stop()
        auth.stop()
    assert b"using TLS" in added, added
    log = postfix.log_text()
    # Postfix logs the SASL login of the client that handed the message in.
    assert f"sasl_username={SMARTHOST_USER}" in log, log[-3000:]
    # All outbound mail goes to the smarthost: no MX lookup for the recipient domain.
    assert dns.queries_for("pf.test", "MX") == 0
