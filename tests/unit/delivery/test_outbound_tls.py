"""The courier's TLS policy: per-domain levels, MTA-STS, DANE, REQUIRETLS (fake driver)."""

from __future__ import annotations

import asyncio
import hashlib
import random

from outbound_fakes import FakeNet, Peer

from dnsserver import FakeResolver, FakeValue
from hato.delivery.mtasts import MtaSts
from hato.delivery.outbound import OutboundCourier
from hato.delivery.smtp_client import DeliveryError, TlsMode
from hato.delivery.tlspolicy import TlsLevel
from hato.delivery.transport import OutboundSettings, Transport
from hato.model import (
    Address,
    Delivered,
    Handoff,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
)
from hato.model.dns import MxRecord, RdType, TlsaRecord
from kit.clock import FakeClock

MESSAGE = QueuedMessage("Q1", Address("alice", "us.test"), 0.0, "", 4, body=b"Hi\r\n")
REQUIRETLS = QueuedMessage(
    "Q2", Address("alice", "us.test"), 0.0, "", 4, body=b"Hi\r\n", params={"REQUIRETLS": None}
)
TLSA = TlsaRecord(3, 1, 1, hashlib.sha256(b"spki").digest())


def dns() -> dict[tuple[str, RdType], FakeValue]:
    return {
        ("example.com", RdType.MX): [MxRecord(10, "mx.example.com")],
        ("mx.example.com", RdType.A): ["192.0.2.1"],
        ("_mta-sts.example.com", RdType.TXT): ["v=STSv1; id=1;"],
        ("_25._tcp.mx.example.com", RdType.TLSA): [TLSA],
    }


class Fetcher:
    def __init__(self, mx: str) -> None:
        self.text = f"version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 600\n"

    async def fetch(self, domain: str) -> str:
        return self.text


def run(
    net: FakeNet,
    *,
    message: QueuedMessage = MESSAGE,
    sts_mx: str | None = None,
    dane: bool = False,
    authenticated: bool = False,
    tls: TlsLevel | None = None,
) -> Outcome:
    resolver = FakeResolver(dns())
    resolver.authenticated = authenticated
    clock = FakeClock(1000.0, 1000.0)
    sts = MtaSts(resolver, Fetcher(sts_mx), clock) if sts_mx is not None else None
    transports = {"example.com": Transport(tls=tls)} if tls is not None else {}
    courier = OutboundCourier(
        OutboundSettings("mail.us.test", transports),
        resolver,
        clock=clock,
        rng=random.Random(1),
        opener=net.open,
        mta_sts=sts,
        dane_resolver=resolver if dane else None,
    )
    rcpt = QueuedRecipient(1, Address("bob", "example.com"), Address("bob", "example.com"))
    (outcome,) = asyncio.run(courier.deliver(message, [rcpt]))
    return outcome


def test_mta_sts_enforce_mismatch_refuses_with_the_policy_named() -> None:
    net = FakeNet({"192.0.2.1": Peer()})
    outcome = run(net, sts_mx="*.elsewhere.test")
    assert isinstance(outcome, TempFailed)
    assert str(outcome.reply) == (
        "451 4.7.5 TLS required by MTA-STS policy of example.com: "
        "mx.example.com does not match its mx"
    )
    assert net.opened == []


def test_mta_sts_enforce_match_connects_with_verification() -> None:
    net = FakeNet({"192.0.2.1": Peer(starttls_fails=True)})
    outcome = run(net, sts_mx="mx.example.com")
    (options,) = net.opened  # no plaintext retry under a policy
    assert options.tls_mode is TlsMode.REQUIRED and options.ssl_context is not None
    assert options.server_name == "mx.example.com"
    assert isinstance(outcome, TempFailed) and outcome.reply.enhanced == "4.7.5"


def test_dane_needs_secure_mx_and_passes_a_verifier() -> None:
    insecure = FakeNet({"192.0.2.1": Peer()})
    assert run(insecure, dane=True) == Delivered("250 ok", Handoff.RELAYED)
    assert insecure.opened[0].verify_peer is None
    assert insecure.opened[0].tls_mode is TlsMode.OPPORTUNISTIC
    secure = FakeNet({"192.0.2.1": Peer()})
    assert run(secure, dane=True, authenticated=True, sts_mx="*.elsewhere.test") == Delivered(
        "250 ok", Handoff.RELAYED
    )  # DANE wins over the MTA-STS mismatch (RFC 8461 §2)
    options = secure.opened[0]
    assert options.tls_mode is TlsMode.REQUIRED and options.verify_peer is not None
    assert not options.verify_peer(b"some other certificate")


def test_per_domain_levels() -> None:
    for level, mode in [
        (TlsLevel.NONE, TlsMode.NONE),
        (TlsLevel.MAY, TlsMode.OPPORTUNISTIC),
        (TlsLevel.ENCRYPT, TlsMode.REQUIRED),
        (TlsLevel.VERIFY, TlsMode.REQUIRED),
    ]:
        net = FakeNet({"192.0.2.1": Peer()})
        assert run(net, tls=level) == Delivered("250 ok", Handoff.RELAYED)
        assert net.opened[0].tls_mode is mode
        assert (net.opened[0].ssl_context is not None) is (level is TlsLevel.VERIFY)
    net = FakeNet({"192.0.2.1": Peer()})
    outcome = run(net, tls=TlsLevel.DANE, dane=True)  # no AD bit: no usable TLSA
    assert isinstance(outcome, TempFailed) and "no DNSSEC-validated TLSA" in outcome.reply.text


def test_requiretls() -> None:
    net = FakeNet({"192.0.2.1": Peer(requiretls=True)})
    refused = run(net, message=REQUIRETLS)  # an MX answer without DNSSEC, no MTA-STS
    assert isinstance(refused, PermFailed) and refused.reply.enhanced == "5.7.30"
    assert net.opened == []
    assert run(net, message=REQUIRETLS, authenticated=True) == Delivered("250 ok", Handoff.RELAYED)
    options = net.opened[0]
    assert options.tls_mode is TlsMode.REQUIRED and options.ssl_context is not None
    params = net.sent[0].params
    assert params is not None and params.requiretls  # passed on (RFC 8689 §4.2.1)
    lacking = FakeNet({"192.0.2.1": Peer(requiretls=False)})
    outcome = run(lacking, message=REQUIRETLS, sts_mx="mx.example.com")
    assert isinstance(outcome, PermFailed) and outcome.reply.enhanced == "5.7.30"
    assert lacking.sent == []


TLS_NO = QueuedMessage(
    "Q3",
    Address("alice", "us.test"),
    0.0,
    "",
    4,
    body=b"TLS-Required: No\r\nSubject: x\r\n\r\nHi\r\n",
)


def test_tls_required_no_ignores_the_mta_sts_policy() -> None:
    net = FakeNet({"192.0.2.1": Peer()})
    # RFC 8689 §4.2.2: the MX does not match the enforced policy, yet the mail goes.
    assert run(net, message=TLS_NO, sts_mx="*.elsewhere.test") == Delivered(
        "250 ok", Handoff.RELAYED
    )
    assert net.opened[0].tls_mode is TlsMode.OPPORTUNISTIC


def test_tls_required_no_is_ignored_under_requiretls() -> None:
    both = QueuedMessage(
        "Q4", TLS_NO.mail_from, 0.0, "", 4, body=TLS_NO.body, params={"REQUIRETLS": None}
    )
    net = FakeNet({"192.0.2.1": Peer(requiretls=True)})
    outcome = run(net, message=both, sts_mx="*.elsewhere.test")
    assert isinstance(outcome, TempFailed) and outcome.reply.enhanced == "4.7.5"
    assert net.opened == []


def test_requiretls_certificate_failure_is_final_5_7_30() -> None:
    refused = DeliveryError("tls", Reply(421, "4.7.5", "bad certificate"), tls_policy=True)
    net = FakeNet({"192.0.2.1": Peer(requiretls=True, open_error=refused)})
    outcome = run(net, message=REQUIRETLS, sts_mx="mx.example.com")
    assert isinstance(outcome, PermFailed) and outcome.reply.enhanced == "5.7.30"
    assert net.sent == []
