"""Mail loops end to end (issue 12 item 10, RFC 5321 §6.3) against the real `hato serve`:
a message that has made too many hops (Received: and Delivered-To: fields, default 50) is
refused 554 5.4.6 at the end of DATA; one handed in by `hato-sendmail` comes back to its sender
as a 5.4.6 bounce; and two Hato servers whose aliases forward to each other (MX records from
the test DNS server) stop after one round trip: the returning copy carries the alias's own
Delivered-To and is refused 554 5.4.6 at the end of DATA instead of being forwarded again (the
other server's bounce finds its way back to the sender through both servers' SRS addresses)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, hato_dns


def _message(received: int, delivered_to: int = 0, marker: str = "loop") -> bytes:
    trace = b"".join(
        f"Received: from relay{n}.example.net by relay{n + 1}.example.net;\r\n"
        f"\tMon, 7 Dec 2026 01:00:{n % 60:02d} +0000\r\n".encode()
        for n in range(received)
    )
    trace += b"".join(
        f"Delivered-To: list{n}@example.net\r\n".encode() for n in range(delivered_to)
    )
    return (
        trace
        + f"From: <someone@example.net>\r\nSubject: {marker}\r\nX-Marker: {marker}\r\n\r\n".encode()
        + b"Received: in the body is no hop\r\n"
    )


@pytest.fixture
def hato(workdir: Path) -> Iterator[HatoServer]:
    server = HatoServer(
        workdir / "data",
        MailSetup(domains=(DomainSetup("example.test", users=("alice", "carol")),)),
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(("received", "delivered_to"), [(50, 0), (69, 0), (150, 0), (200, 0),
                                                        (500, 0), (30, 20)])  # fmt: skip
def test_too_many_hops_are_refused_554_5_4_6_at_the_end_of_data(
    hato: HatoServer, received: int, delivered_to: int
) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("someone@example.net")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(_message(received, delivered_to))
    assert (code, text[:6]) == (554, b"5.4.6 "), (code, text)
    assert hato.wait_for_log(
        rf"event=message-refused .*reason=mail-loop hops={received + delivered_to}"
    )
    assert maildir.messages(hato.mailbox("alice", "example.test")) == []


def test_49_hops_are_accepted(hato: HatoServer) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as client:
        assert client.sendmail("someone@example.net", ["alice@example.test"], _message(49)) == {}
    (stored,) = maildir.wait_for_count(hato.mailbox("alice", "example.test"), 1, 15)
    assert b"X-Marker: loop" in stored.read_bytes()


def test_a_looping_message_from_sendmail_bounces_with_5_4_6(hato: HatoServer) -> None:
    sent = hato.sendmail(
        ["-f", "carol@example.test", "alice@example.test"],
        _message(60).replace(b"\r\n", b"\n"),
        env_socket=True,
    )
    assert sent.returncode == 0, sent.stderr
    (bounce,) = maildir.wait_for_count(hato.mailbox("carol", "example.test"), 1, 15)
    dsn = bounce.read_bytes()
    assert b"report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822;alice@example.test" in dsn
    assert b"Status: 5.4.6" in dsn
    assert maildir.messages(hato.mailbox("alice", "example.test")) == []
    assert hato.wait_for_log(r"event=mail-loop .*reason=hops hops=60")


class ForwardingHato(HatoServer):
    """A Hato of its own host name whose MX lookups go to the test DNS server and whose
    deliveries all go to the other server's port on loopback."""

    def __init__(self, data_dir: Path, setup: MailSetup, hostname: str, nameserver: str) -> None:
        super().__init__(data_dir, setup)
        self.hostname = hostname
        self.nameserver = nameserver
        self.peer_port = 0

    def _config_text(self) -> str:
        text = super()._config_text()
        assert 'hostname = "hato.test"' in text
        # Each its own name: the same name in the other's greeting would be a loop of its own.
        text = text.replace('hostname = "hato.test"', f'hostname = "{self.hostname}"')
        return text + (
            hato_dns(self.nameserver)
            + f"\n[delivery]\nmx_port = {self.peer_port}\nallow_loopback = true\n"
            "connect_timeout = 5\nattempt_timeout = 20\n"
        )


def test_two_servers_forwarding_to_each_other_stop_after_one_round_trip(workdir: Path) -> None:
    zone = {
        "a.test": {"MX": [(10, "mx.a.test")]},
        "mx.a.test": {"A": ["127.0.0.1"]},
        "b.test": {"MX": [(10, "mx.b.test")]},
        "mx.b.test": {"A": ["127.0.0.1"]},
        "c.test": {"MX": [(10, "mx.b.test")]},
    }
    with DnsTestServer(zone) as dns:  # type: ignore[arg-type]
        a = ForwardingHato(
            workdir / "a",
            MailSetup(domains=(DomainSetup("a.test", aliases=(("loop", ("x@b.test",)),)),)),
            "mx.a.test",
            dns.nameserver,
        )
        b = ForwardingHato(
            workdir / "b",
            MailSetup(
                domains=(
                    DomainSetup("b.test", aliases=(("x", ("loop@a.test",)),)),
                    DomainSetup("c.test", accept_any=True),  # the sender's domain
                )
            ),
            "mx.b.test",
            dns.nameserver,
        )
        a.peer_port, b.peer_port = b.port, a.port
        a.start()
        try:
            b.start()
            try:
                _forward_loop(a, b)
            finally:
                b.stop()
        finally:
            a.stop()


def _forward_loop(a: ForwardingHato, b: ForwardingHato) -> None:
    message = b"From: <dave@c.test>\r\nSubject: round\r\nX-Marker: round\r\n\r\nand round\r\n"
    with smtplib.SMTP(a.host, a.port, timeout=30) as client:
        assert client.sendmail("dave@c.test", ["loop@a.test"], message) == {}
    # The copy B sends back carries A's "Delivered-To: loop@a.test": A refuses it 554 5.4.6 at
    # the end of DATA (it would forward it again), and B, which accepted it, bounces it to
    # what its SRS1 sender stands for, A's SRS0; A reverses that to dave@c.test (on B).
    (bounce,) = maildir.wait_for_count(b.mailbox("dave", "c.test"), 1, 30)
    dsn = bounce.read_bytes()
    assert b"Status: 5.4.6" in dsn, dsn.decode() + a.log_text()[-4000:]
    assert b"Final-Recipient: rfc822;loop@a.test" in dsn
    assert a.wait_for_log(r"event=message-refused .*reason=forward-loop rcpt=loop@a\.test")
    assert b.wait_for_log(r"event=dsn-queued .*to=<SRS0=[^=]{4}=..=c\.test=dave@a\.test>")
    # One round trip: A accepted the message from the client and the bounce returning through
    # it, refused the copy B forwarded back; B accepted that forward, its bounce reversed by
    # A, and delivered nothing else.
    assert "event=mail-loop " not in a.log_text()
    _wait_count(a, "event=accepted ", 2)
    _wait_count(b, "event=accepted ", 2)


def _wait_count(server: HatoServer, text: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while server.log_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log_text().count(text) == count, server.log_text()[-4000:]
