"""Outbound TLS trust (issue 13 item 9, issue 14 item 7): a next hop whose certificate comes from
a private CA. Without `ca_file` the delivery is deferred and the reason (which certificate check
failed) is in the log and in `hato queue show`, not only "TLS handshake failed"; with
`[smarthost] ca_file` (or `[delivery] ca_file` for verified relays and MX hosts) the same
queued message is delivered. Hato's system trust is the test CA (SSL_CERT_FILE), the peers'
certificates come from a second, private CA that the system does not know."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from peers import maildir
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.outbound_peers import Dovecot, PostfixSubmission, PostfixTlsReceiver
from peers.server import DomainSetup, MailSetup
from peers.tls import TestCA, make_test_ca

from dnsserver import DnsTestServer, ZoneValue

ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "localhost": {"A": ["127.0.0.1"]},  # a name the private certificate carries
    "relay.pf.test": {"A": ["127.0.0.1"]},  # a name it does not carry
}
POSTFIX_DOMAINS = MailSetup(domains=(DomainSetup("pf.test", users=("bob",)),))
USER, PASSWORD = "relay-user@users.test", "relay-secret-4711"
# OpenSSL's verify messages for a chain it cannot anchor: the peer sends its CA along
# (Postfix's fullchain) or only the leaf.
UNTRUSTED = re.compile(
    r"certificate verify failed: (?:self.signed certificate in certificate chain"
    r"|unable to get local issuer certificate)"
)


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def private_ca(workdir: Path) -> TestCA:
    return make_test_ca(workdir / "private-ca")


def _deferred_id(hato: OutboundHato, rcpt: str) -> str:
    (line,) = hato.wait_event("deferred", to=f"<{rcpt}>")
    found = re.search(r"\bid=(\S+)", line)
    assert found, line
    return found[1]


def _reconfigure(hato: OutboundHato, extra: str) -> None:
    """Stop, write the new outbound config, start again: the queued message stays."""
    hato.stop()
    hato.outbound = replace(hato.outbound, extra=extra)
    hato.config.write_text(hato.config_text(), encoding="utf-8")
    hato.start()


def _delivered(root: Path, marker: str, logs: Callable[[], str]) -> bytes:
    found = maildir.wait_for_marker(root, marker)
    assert len(found) == 1, logs()
    return found[0].read_bytes()


def test_private_ca_smarthost_shows_why_then_delivers_with_its_ca_file(
    require_peer: Callable[[str], str],
    workdir: Path,
    test_ca: TestCA,
    private_ca: TestCA,
    dns: DnsTestServer,
) -> None:
    require_peer("postfix")
    auth = Dovecot(workdir / "sasl", lmtp=False, users={USER: PASSWORD})
    auth.start()
    postfix = PostfixSubmission(workdir / "postfix", POSTFIX_DOMAINS, private_ca, auth.auth_socket)
    hato: OutboundHato | None = None
    try:
        postfix.start()
        smarthost = (
            f'\n[smarthost]\nhost = "localhost"\nport = {postfix.port}\ntls = "starttls"\n'
            f'username = "{USER}"\npassword = "{PASSWORD}"\n'
        )
        hato = OutboundHato(
            workdir / "hato", test_ca, OutboundConfig(dns.nameserver, extra=smarthost)
        )
        hato.start()
        marker = uuid.uuid4().hex
        hato.submit(["bob@pf.test"], message("bob@pf.test", marker))
        queue_id = _deferred_id(hato, "bob@pf.test")
        # The reason, in the log and in the queue: OpenSSL's verify message.
        (failed,) = hato.events("connection-failed", stage="tls")
        assert UNTRUSTED.search(failed), failed
        shown = hato.hato("queue", "show", queue_id)
        assert shown.returncode == 0, shown.stderr
        assert re.search(
            "last reply: 421 4.7.5 TLS handshake failed: " + UNTRUSTED.pattern, shown.stdout
        ), shown.stdout

        ca_line = f"ca_file = {str(private_ca.ca_cert)!r}\n".replace("'", '"')
        _reconfigure(hato, smarthost + ca_line)
        hato.flush()
        added = _delivered(
            postfix.mailbox("bob", "pf.test"),
            marker,
            lambda: hato.log_text()[-3000:] if hato else "",
        )
        hato.wait_event("delivered", to="<bob@pf.test>")
        assert b"using TLS" in added, added
    finally:
        if hato is not None:
            hato.stop()
        postfix.stop()
        auth.stop()


def test_delivery_ca_file_trusts_a_private_ca_relay_and_a_name_mismatch_says_so(
    require_peer: Callable[[str], str],
    workdir: Path,
    test_ca: TestCA,
    private_ca: TestCA,
    dns: DnsTestServer,
) -> None:
    require_peer("postfix")
    postfix = PostfixTlsReceiver(workdir / "postfix", POSTFIX_DOMAINS, private_ca)
    hato: OutboundHato | None = None
    try:
        postfix.start()
        # RFC 7672 / Postfix "verify": a relay whose certificate must name it.
        relay = (
            f'\n[[transport]]\ndomain = "pf.test"\nrelay = "relay.pf.test:{postfix.port}"\n'
            'tls = "verify"\n'
        )
        # OutboundConfig.extra continues OutboundHato's [delivery] table until its own tables.
        trust = f"ca_file = {str(private_ca.ca_cert)!r}\n".replace("'", '"')
        hato = OutboundHato(workdir / "hato", test_ca, OutboundConfig(dns.nameserver, extra=relay))
        hato.start()
        marker = uuid.uuid4().hex
        hato.submit(["bob@pf.test"], message("bob@pf.test", marker))
        queue_id = _deferred_id(hato, "bob@pf.test")
        shown = hato.hato("queue", "show", queue_id).stdout
        assert UNTRUSTED.search(shown), shown
        listed = hato.hato("queue", "list").stdout
        assert "TLS with the receiving server failed: 421 4.7.5" in listed, listed

        # Trusted now, but the certificate does not name relay.pf.test (RFC 6125 §6.4).
        _reconfigure(hato, trust + relay)
        hato.flush()
        hato.wait_event("deferred", to="<bob@pf.test>", count=2)
        shown = hato.hato("queue", "show", queue_id).stdout
        assert "certificate verify failed: Hostname mismatch" in shown, shown
        assert "relay.pf.test" in shown, shown

        # Named as the certificate names it: delivered.
        _reconfigure(hato, trust + relay.replace("relay.pf.test", "localhost"))
        hato.flush()
        _delivered(
            postfix.mailbox("bob", "pf.test"),
            marker,
            lambda: hato.log_text()[-3000:] if hato else "",
        )
        hato.wait_event("delivered", to="<bob@pf.test>")
    finally:
        if hato is not None:
            hato.stop()
        postfix.stop()
