"""The outbound courier for real: the SMTP driver, dnspython against the in-process DNS test
server (MX, A, TLSA with the AD bit), and aiosmtpd as the receiver, all on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from peers.net import free_port

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer, ZoneDict
from hato.delivery.dane import tlsa_data
from hato.delivery.outbound import OutboundCourier
from hato.delivery.tlspolicy import TlsLevel
from hato.delivery.transport import OutboundSettings, Transport
from hato.dns import DnsPythonResolver
from hato.model import (
    Address,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    SystemClock,
    TempFailed,
)
from hato.server.tls import ensure_self_signed, server_context

MX = "mx.example.test"


@dataclass
class Handler:
    received: list[tuple[str, list[str], bytes, bool, int]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(
            (
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                session.ssl is not None,
                id(session),
            )
        )
        return "250 2.0.0 queued"


@dataclass
class Receiver:
    port: int
    handler: Handler
    cert_der: bytes


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    cert, key = ensure_self_signed(tmp_path / "tls", MX)
    handler, port = Handler(), free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=server_context(cert, key)
    )
    controller.start()
    try:
        yield Receiver(port, handler, ssl.PEM_cert_to_DER_cert(cert.read_text()))
    finally:
        controller.stop()


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    zone: ZoneDict = {
        "example.test": {"MX": [(10, MX)]},
        MX: {"A": ["127.0.0.1"]},
        "null.test": {"MX": [(0, "")]},
    }
    with DnsTestServer(zone) as server:
        yield server


def run(
    receiver: Receiver,
    dns_server: DnsTestServer,
    *messages: tuple[QueuedMessage, list[str]],
    tls: TlsLevel | None = None,
    dane: bool = False,
) -> list[list[Outcome]]:
    resolver = DnsPythonResolver([dns_server.nameserver], timeout=HATO_DNS_TIMEOUT)
    transports = {"example.test": Transport(tls=tls)} if tls is not None else {}
    settings = OutboundSettings("hato.test", transports, mx_port=receiver.port, allow_loopback=True)

    async def scenario() -> list[list[Outcome]]:
        courier = OutboundCourier(
            settings,
            resolver,
            clock=SystemClock(),
            rng=random.Random(1),
            dane_resolver=resolver if dane else None,
        )
        results = []
        for message, rcpts in messages:
            rows = [
                QueuedRecipient(i, Address.parse(r), Address.parse(r)) for i, r in enumerate(rcpts)
            ]
            results.append(await courier.deliver(message, rows))
        await courier.aclose()
        return results

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def message(n: int) -> QueuedMessage:
    body = f"Subject: {n}\r\n\r\nHello {n}\r\n".encode()
    prefix = b"Received: by hato.test\r\n"
    return QueuedMessage(
        f"Q{n}", Address("alice", "us.test"), 0.0, "", len(body), prefix, body=body
    )


def test_mx_delivery_with_starttls_and_connection_reuse(
    receiver: Receiver, dns_server: DnsTestServer
) -> None:
    first, second = run(
        receiver,
        dns_server,
        (message(1), ["bob@example.test", "carol@example.test"]),
        (message(2), ["dave@example.test"]),
    )
    assert all(isinstance(o, Delivered) for o in first + second)
    got = receiver.handler.received
    assert [(m[0], m[1]) for m in got] == [
        ("alice@us.test", ["bob@example.test", "carol@example.test"]),
        ("alice@us.test", ["dave@example.test"]),
    ]
    assert got[0][2].startswith(b"Received: by hato.test\r\nSubject: 1\r\n")
    assert all(m[3] for m in got)  # opportunistic STARTTLS was used
    assert got[0][4] == got[1][4]  # one SMTP session carried both messages


def test_null_mx_never_connects(receiver: Receiver, dns_server: DnsTestServer) -> None:
    ((outcome,),) = run(receiver, dns_server, (message(1), ["bob@null.test"]))
    assert isinstance(outcome, PermFailed) and outcome.reply.enhanced == "5.1.10"
    assert receiver.handler.received == []


def test_verify_level_fails_on_a_self_signed_certificate(
    receiver: Receiver, dns_server: DnsTestServer
) -> None:
    ((outcome,),) = run(
        receiver, dns_server, (message(1), ["bob@example.test"]), tls=TlsLevel.VERIFY
    )
    assert isinstance(outcome, TempFailed) and outcome.reply.enhanced == "4.7.5"
    assert receiver.handler.received == []  # and no fall back to plaintext


def test_dane_ee_match_and_mismatch(receiver: Receiver, dns_server: DnsTestServer) -> None:
    dns_server.authenticated = True  # the AD bit of a validating resolver
    good = tlsa_data(receiver.cert_der, 1, 1).hex()
    dns_server.load(
        {
            "example.test": {"MX": [(10, MX)]},
            MX: {"A": ["127.0.0.1"]},
            f"_{receiver.port}._tcp.{MX}": {"TLSA": [(3, 1, 1, good)]},
        }
    )
    ((outcome,),) = run(receiver, dns_server, (message(1), ["bob@example.test"]), dane=True)
    assert isinstance(outcome, Delivered) and receiver.handler.received[0][3]
    bad = hashlib.sha256(b"another key").hexdigest()
    dns_server.load(
        {
            "example.test": {"MX": [(10, MX)]},
            MX: {"A": ["127.0.0.1"]},
            f"_{receiver.port}._tcp.{MX}": {"TLSA": [(3, 1, 1, bad)]},
        }
    )
    ((outcome,),) = run(receiver, dns_server, (message(2), ["bob@example.test"]), dane=True)
    assert isinstance(outcome, TempFailed) and outcome.reply.enhanced == "4.7.5"
    assert len(receiver.handler.received) == 1
