"""The outbound attempt tells the TLS reports (RFC 8460) what happened at each MX host: a
success under the domain's policy, or a failure with its result-type (fake driver)."""

from __future__ import annotations

import asyncio
import random

from outbound_fakes import FakeNet, Peer

from dnsserver import FakeResolver
from hato.delivery.mtasts import MtaSts
from hato.delivery.outbound import OutboundCourier
from hato.delivery.smtp_client import TLS_NOT_OFFERED, DeliveryError
from hato.delivery.tlsreport import TlsReporting
from hato.delivery.transport import OutboundSettings
from hato.model import Address, QueuedMessage, QueuedRecipient, Reply
from hato.model.dns import MxRecord, RdType
from hato.reports import PolicyType, TlsEvent, TlsFailure
from kit.clock import FakeClock

MESSAGE = QueuedMessage("Q1", Address("alice", "us.test"), 0.0, "", 4, body=b"Hi\r\n")


class Recorder:
    def __init__(self) -> None:
        self.tls: list[TlsEvent] = []

    def record_dmarc(self, event: object) -> None:
        raise AssertionError("not on outbound")

    def record_tls(self, event: TlsEvent) -> None:
        self.tls.append(event)


class Fetcher:
    async def fetch(self, domain: str) -> str:
        return "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 600\n"


def run(peer: Peer, sts: bool) -> list[TlsEvent]:
    resolver = FakeResolver(
        {
            ("example.com", RdType.MX): [MxRecord(10, "mx.example.com")],
            ("mx.example.com", RdType.A): ["192.0.2.1"],
            ("_mta-sts.example.com", RdType.TXT): ["v=STSv1; id=1;"],
        }
    )
    clock = FakeClock()
    courier = OutboundCourier(
        OutboundSettings("mail.us.test", {}),
        resolver,
        clock=clock,
        rng=random.Random(1),
        opener=FakeNet({"192.0.2.1": peer}).open,
        mta_sts=MtaSts(resolver, Fetcher(), clock) if sts else None,
    )
    recorder = Recorder()
    courier.tls_reports = TlsReporting(recorder, clock)
    rcpt = QueuedRecipient(1, Address("bob", "example.com"), Address("bob", "example.com"))
    asyncio.run(courier.deliver(MESSAGE, [rcpt]))
    return recorder.tls


def test_an_mx_without_starttls_under_mta_sts_is_a_starttls_not_supported_failure() -> None:
    (event,) = run(Peer(open_error=DeliveryError("tls", TLS_NOT_OFFERED, tls_policy=True)), True)
    assert event.policy_domain == "example.com"
    assert event.policy_type is PolicyType.STS
    assert "mode: enforce" in event.policy_strings
    assert (event.mx_host, event.receiving_ip) == ("mx.example.com", "192.0.2.1")
    assert event.failure is TlsFailure.STARTTLS_NOT_SUPPORTED


def test_an_expired_certificate_and_a_success() -> None:
    expired = Reply(421, "4.7.5", "TLS handshake failed: certificate verify failed: "
                    "certificate has expired")  # fmt: skip
    (event,) = run(Peer(open_error=DeliveryError("tls", expired, tls_policy=True)), True)
    assert event.failure is TlsFailure.CERTIFICATE_EXPIRED
    (ok,) = run(Peer(), False)
    assert ok.failure is None and ok.policy_type is PolicyType.NONE
