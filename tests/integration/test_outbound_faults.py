"""Outbound fault cases end to end (issue 4): the real `hato serve` against a scripted SMTP peer
that answers 4xx at RCPT or after DATA, 5xx, drops the connection mid-DATA, or is not there at
all. Temporary trouble leaves the mail queued; once it is due again (`hato queue flush`, as an
admin would: the first retry is 5 minutes away) it is delivered, and exactly once. A 5xx is
final: the sender is told (RFC 3464 DSN).
"""

from __future__ import annotations

import email
import email.policy
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from peers import maildir
from peers.net import LOOPBACK, free_port
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.outbound_scripted import ScriptedPeer, Step
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

RCPT = "bob@peer.test"


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    zone: dict[str, dict[str, list[ZoneValue]]] = {
        "peer.test": {"MX": [(10, "mx.peer.test")]},
        "mx.peer.test": {"A": ["127.0.0.1"]},
    }
    with DnsTestServer(zone) as server:
        yield server


@pytest.fixture
def peer_port() -> int:
    return free_port()


@pytest.fixture
def hato(
    workdir: Path, test_ca: TestCA, dns: DnsTestServer, peer_port: int
) -> Iterator[OutboundHato]:
    server = OutboundHato(workdir / "data", test_ca, OutboundConfig(dns.nameserver, peer_port))
    server.start()
    yield server
    server.stop()


def _flush_and_expect_one(hato: OutboundHato, peer: ScriptedPeer, marker: str) -> None:
    """Make the deferred mail due, then: delivered, and only once."""
    assert peer.delivered(marker) == [], "delivered before the retry"
    hato.flush()
    hato.wait_event("delivered", to=f"<{RCPT}>")
    got = peer.wait_delivered(marker)
    time.sleep(0.5)  # a second copy would come now, on the same or another connection
    got = peer.delivered(marker)
    assert len(got) == 1, (got, peer.dialog)
    assert got[0].recipients == [f"<{RCPT}>"]
    listed = hato.hato("queue", "list")
    assert RCPT not in listed.stdout, listed.stdout


@pytest.mark.parametrize(
    "first",
    [
        # RFC 5321 §3.8: 421 closes the connection; the transaction is not done.
        Step(rcpt="421 4.3.2 Service shutting down"),
        Step(rcpt="450 4.2.1 Mailbox busy, try again later"),
        Step(data="451 4.3.0 Error: queue file write error"),
    ],
    ids=["421-at-rcpt", "450-at-rcpt", "451-after-data"],
)
def test_temporary_failure_is_retried_and_delivered_once(
    hato: OutboundHato, peer_port: int, first: Step
) -> None:
    marker = uuid.uuid4().hex
    reply = first.rcpt if not first.rcpt.startswith("2") else first.data
    with ScriptedPeer(LOOPBACK, peer_port, [first, Step()]) as peer:
        hato.submit([RCPT], message(RCPT, marker))
        [line] = hato.wait_event("deferred", to=f"<{RCPT}>", attempts="1")
        assert reply.split(" ", 2)[1] in line, line  # the peer's enhanced code is kept
        assert not hato.events("delivered", to=f"<{RCPT}>")
        _flush_and_expect_one(hato, peer, marker)


def test_peer_down_then_up(hato: OutboundHato, peer_port: int) -> None:
    marker = uuid.uuid4().hex
    hato.submit([RCPT], message(RCPT, marker))
    # Nothing listens: connection refused is a temporary failure (RFC 5321 §4.5.4.1).
    hato.wait_event("deferred", to=f"<{RCPT}>", attempts="1")
    listed = hato.hato("queue", "list")
    assert RCPT in listed.stdout, listed
    with ScriptedPeer(LOOPBACK, peer_port) as peer:
        _flush_and_expect_one(hato, peer, marker)


def test_connection_dropped_mid_data_is_retried_and_delivered_once(
    hato: OutboundHato, peer_port: int
) -> None:
    marker = uuid.uuid4().hex
    with ScriptedPeer(LOOPBACK, peer_port, [Step(drop_in_data=True), Step()]) as peer:
        hato.submit([RCPT], message(RCPT, marker))
        hato.wait_event("deferred", to=f"<{RCPT}>", attempts="1")
        assert len(peer.transactions) == 1 and not peer.transactions[0].delivered
        _flush_and_expect_one(hato, peer, marker)
        assert len(peer.transactions) == 2


def _bounce(hato: OutboundHato, timeout: float) -> EmailMessage | None:
    """The first message in alice's (the sender's) local Maildir, parsed."""
    found = maildir.wait_for_count(hato.mailbox("alice", "users.test"), 1, timeout)
    if not found:
        return None
    parsed = email.message_from_bytes(found[0].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_permanent_failure_fails_at_once_and_tells_the_sender(
    hato: OutboundHato, peer_port: int
) -> None:
    marker = uuid.uuid4().hex
    steps = [Step(rcpt="550 5.1.1 <bob@peer.test>: Recipient address rejected")]
    with ScriptedPeer(LOOPBACK, peer_port, steps) as peer:
        hato.submit([RCPT], message(RCPT, marker))
        [line] = hato.wait_event("failed", to=f"<{RCPT}>", attempts="1")
        assert "550 5.1.1" in line, line
        assert peer.delivered() == []
        assert len(peer.transactions) == 1  # final: never tried again
    dsn = _bounce(hato, timeout=10)
    if dsn is None:
        pytest.fail("no DSN reached the sender within 10 s (see event=dsn-queued in the log)")
    # RFC 3464 §2: multipart/report; report-type=delivery-status, the human part first, then
    # message/delivery-status with a per-recipient block naming the failure.
    assert dsn.get_content_type() == "multipart/report", dsn
    assert dsn.get_param("report-type") == "delivery-status"
    parts = list(dsn.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    status = parts[1].as_string()
    assert "Action: failed" in status and "Status: 5.1.1" in status, status
    assert "bob@peer.test" in status and "550" in status, status
    assert dsn["To"] is not None and "alice@users.test" in str(dsn["To"])
