"""Forwarding without backscatter (issue 12 item 11) between two real `hato serve` processes and
the test DNS server: Hato A hosts a.test, whose aliases forward to b.test on Hato B; B also
hosts c.test, the domain of the (unauthenticated, unchecked) sender dave.

- A forwards dave's mail from an SRS address of a.test (libsrs2's SRS0 format), so B, which
  would refuse dave@c.test from a stranger, takes it, and B's bounces go back through A.
- A accepts a bounce to a valid, fresh SRS0 address and passes it on to dave; a forged hash or
  an expired stamp is refused 550 5.1.1.
- A's own bounce of a forwarded copy returns dave's header section only, never the body.
- NOTIFY=SUCCESS from a sender that neither authenticated nor passed SPF is ignored (logged);
  dave (SPF pass: A checks inbound mail) and carol (authenticated on A's submission port) get
  their success notices.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.server import USER_PASSWORD, DomainSetup, MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer, hato_dns
from hato.directory.srs import Srs
from hato.model import Address

ZONE = {
    "a.test": {"MX": [(10, "mx.a.test")]},
    "mx.a.test": {"A": ["127.0.0.1"]},
    "b.test": {"MX": [(10, "mx.b.test")]},
    "mx.b.test": {"A": ["127.0.0.1"]},
    "c.test": {"MX": [(10, "mx.b.test")], "TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
}
DAVE = "dave@c.test"


class PeerHato(HatoServer):
    """A Hato of its own host name, MX lookups through the test DNS server, every delivery to
    the other server's port on loopback."""

    def __init__(self, data_dir: Path, setup: MailSetup, hostname: str, nameserver: str) -> None:
        super().__init__(data_dir, setup)
        self.hostname = hostname
        self.nameserver = nameserver
        self.peer_port = 0
        self.inbound = False
        self.test_ca: TestCA | None = None

    def _config_text(self) -> str:
        text = super()._config_text()
        assert 'hostname = "hato.test"' in text
        text = text.replace('hostname = "hato.test"', f'hostname = "{self.hostname}"')
        if self.inbound:  # SPF, DKIM, DMARC of what arrives on mx, through the test DNS server
            text = text.replace("inbound = false", "inbound = true")
        return text + (
            hato_dns(self.nameserver)
            + f"\n[delivery]\nmx_port = {self.peer_port}\nallow_loopback = true\n"
            "connect_timeout = 5\nattempt_timeout = 20\n"
        )


@dataclass(frozen=True, slots=True)
class World:
    a: PeerHato
    b: PeerHato


@pytest.fixture
def world(workdir: Path, test_ca: TestCA) -> Iterator[World]:
    with DnsTestServer(ZONE) as dns:  # type: ignore[arg-type]
        aliases = (("fwd", ("x@b.test",)), ("gone", ("nobody@b.test",)))
        a = PeerHato(
            workdir / "a",
            MailSetup(
                domains=(DomainSetup("a.test", users=("carol",), aliases=aliases),),
                submission=True,
                tls=test_ca.tls_files(),
            ),
            "mx.a.test",
            dns.nameserver,
        )
        b = PeerHato(
            workdir / "b",
            MailSetup(
                domains=(
                    DomainSetup("b.test", users=("x",)),
                    DomainSetup("c.test", accept_any=True),
                )
            ),
            "mx.b.test",
            dns.nameserver,
        )
        a.peer_port, b.peer_port = b.port, a.port
        a.inbound = True
        a.test_ca = test_ca
        a.start()
        try:
            b.start()
            try:
                yield World(a, b)
            finally:
                b.stop()
        finally:
            a.stop()


def _message(marker: str) -> bytes:
    return (
        f"From: <{DAVE}>\r\nSubject: {marker}\r\nX-Hato-Test-Marker: {marker}\r\n\r\n"
        f"the body of {marker}\r\n"
    ).encode()


def _rcpt_reply(server: HatoServer, sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo()
        assert client.mail(sender)[0] == 250
        return client.rcpt(rcpt)


def test_forwarded_mail_leaves_from_srs0_and_only_valid_bounces_come_back(world: World) -> None:
    a, b = world.a, world.b
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:
        assert client.sendmail(DAVE, ["fwd@a.test"], _message("srs-1")) == {}
    (stored,) = maildir.wait_for_count(b.mailbox("x", "b.test"), 1, 30)
    head = stored.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    (return_path,) = [line for line in head.split("\r\n") if line.startswith("Return-Path:")]
    srs0 = return_path.removeprefix("Return-Path: <").removesuffix(">")
    local, _, domain = srs0.rpartition("@")
    assert domain == "a.test" and local.startswith("SRS0=") and local.endswith("=c.test=dave")
    assert b"Delivered-To: fwd@a.test" in stored.read_bytes()

    # B's bounce (or anyone's) to that address reaches dave; in any case of the letters.
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:
        bounce = b"From: MAILER-DAEMON@mx.b.test\r\nSubject: bounce\r\n\r\nreturned\r\n"
        assert client.sendmail("<>", [srs0.swapcase()], bounce) == {}
    (returned,) = maildir.wait_for_count(b.mailbox("dave", "c.test"), 1, 30)
    assert returned.read_bytes().endswith(b"returned\r\n")

    # A forged hash, or a stamp older than 21 days (made with A's own key), is no address.
    digest = local[5:9]
    forged = local.replace(digest, "AAAA" if digest.upper() != "AAAA" else "BBBB", 1)
    key = (a.data_dir / "srs.key").read_text().strip().encode()
    old = Srs(key).forward(Address("dave", "c.test"), "a.test", time.time() - 30 * 86_400)
    assert old is not None
    for address in (f"{forged}@a.test", str(old), "SRS0=xxxx=AA=c.test=dave@a.test"):
        code, text = _rcpt_reply(a, "", address)
        assert (code, text[:6]) == (550, b"5.1.1 "), (address, code, text)


def test_a_bounce_of_forwarded_mail_returns_the_header_section_only(world: World) -> None:
    a, b = world.a, world.b
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:
        assert client.sendmail(DAVE, ["gone@a.test"], _message("hdrs-1")) == {}
    # B refuses nobody@b.test: A's bounce goes to dave (on B), headers only.
    (dsn,) = maildir.wait_for_count(b.mailbox("dave", "c.test"), 1, 30)
    data = dsn.read_bytes()
    assert b"Status: 5.1.1" in data and b"Final-Recipient: rfc822;nobody@b.test" in data
    assert b"Content-Type: text/rfc822-headers" in data
    assert b"X-Hato-Test-Marker: hdrs-1" in data
    assert b"the body of hdrs-1" not in data
    assert a.wait_for_log(r"event=dsn-queued .*to=<dave@c\.test> .*returned=headers")


def test_notify_success_from_an_unchecked_sender_is_ignored(world: World) -> None:
    a = world.a
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:
        refused = client.sendmail(  # d.test publishes no SPF: anyone may claim eve
            "eve@d.test", ["carol@a.test"], _message("success-1"), rcpt_options=["NOTIFY=SUCCESS"]
        )
        assert refused == {}
    assert maildir.wait_for_marker(a.mailbox("carol", "a.test"), "success-1")
    found = a.wait_for_log(r"event=dsn-success-ignored id=(\S+) rcpt=<carol@a\.test>", 30)
    assert found is not None
    assert f"event=dsn-queued id={found.group(1)}" not in a.log_text()


def test_notify_success_for_an_spf_pass_or_authenticated_sender(world: World) -> None:
    a, b = world.a, world.b
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:  # c.test's SPF lists 127.0.0.1
        refused = client.sendmail(
            DAVE, ["carol@a.test"], _message("success-2"), rcpt_options=["NOTIFY=SUCCESS"]
        )
        assert refused == {}
    (notice,) = maildir.wait_for_count(b.mailbox("dave", "c.test"), 1, 30)
    assert b"Action: delivered" in notice.read_bytes()
    with smtplib.SMTP(a.host, a.submission_port, timeout=30) as client:
        assert a.test_ca is not None
        client.starttls(context=a.test_ca.client_context())
        client.login("carol@a.test", USER_PASSWORD)
        message = _message("success-3").replace(DAVE.encode(), b"carol@a.test")
        refused = client.sendmail(
            "carol@a.test", ["carol@a.test"], message, rcpt_options=["NOTIFY=SUCCESS"]
        )
        assert refused == {}
    mails = maildir.wait_for_count(a.mailbox("carol", "a.test"), 3, 30)  # 2nd, 3rd, notice
    assert any(b"Action: delivered" in m.read_bytes() for m in mails), a.log_text()[-3000:]
    assert "event=dsn-success-ignored" not in a.log_text()
