"""The outbound attempt tells the TLS reports (RFC 8460) what happened at each MX host: a
success under the domain's policy, or a failure with its result-type (fake driver)."""

from __future__ import annotations

import asyncio
import random

from outbound_fakes import FakeNet, Peer

from dnsserver import FakeResolver
from hato.delivery.mtasts import MtaSts, StsFetchError
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
    def __init__(self, error: str = "") -> None:
        self.error = error

    async def fetch(self, domain: str) -> str:
        if self.error:
            raise StsFetchError(self.error)
        return "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 600\n"


def run(peer: Peer, sts: bool, fetch_error: str = "") -> list[TlsEvent]:
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
        mta_sts=MtaSts(resolver, Fetcher(fetch_error), clock) if sts else None,
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


def test_a_policy_that_cannot_be_fetched_is_reported_and_the_mail_still_goes() -> None:
    # RFC 8461 §5.1: without a (cached) policy the mail goes as without MTA-STS; RFC 8460
    # §4.3: the fetch failure is a failure of the sts policy all the same.
    failed, delivered = run(Peer(), True, fetch_error="HTTP status 404")
    assert (failed.policy_type, failed.failure) == (
        PolicyType.STS,
        TlsFailure.STS_POLICY_FETCH_ERROR,
    )
    assert failed.detail == "HTTP status 404"
    assert delivered.failure is None and delivered.policy_type is PolicyType.NONE
    (webpki, _) = run(Peer(), True, fetch_error="SSLCertVerificationError: certificate expired")
    assert webpki.failure is TlsFailure.STS_WEBPKI_INVALID
