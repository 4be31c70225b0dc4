"""ARC sealing and verification round trips (the standard suite is in tests/vectors)."""

from __future__ import annotations

import asyncio

from dnsserver import FakeResolver
from hato.authcheck.arc import ArcSealer, ArcStatus, verify_arc
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key
from hato.model.dns import RdType, TxtRecord
from kit.clock import FakeClock

CLOCK = FakeClock(1_700_000_000.0, 0.0)  # frozen: every signature has t=1700000000

HEADERS = (
    b"Authentication-Results: fwd.example; spf=pass smtp.mailfrom=a@example.com\r\n"
    b"From: a@example.com\r\nTo: list@fwd.example\r\nSubject: hi\r\n\r\n"
)
BODY = b"Hello\r\n"


def _setup() -> tuple[ArcSealer, FakeResolver]:
    pem, record = generate_key(DkimAlgorithm.RSA_SHA256)
    sealer = ArcSealer("fwd.example", "arc", load_signing_key(pem), "fwd.example", CLOCK)
    resolver = FakeResolver(
        {("arc._domainkey.fwd.example", RdType.TXT): [TxtRecord((record.encode(),))]}
    )
    return sealer, resolver


def test_seal_then_verify_two_hops() -> None:
    sealer, resolver = _setup()
    assert asyncio.run(verify_arc(HEADERS + BODY, resolver)).status is ArcStatus.NONE
    first = sealer.seal(HEADERS, [BODY], ArcStatus.NONE)
    assert first is not None
    assert (
        first.count(b"\r\nARC-") == 2 and b"ARC-Authentication-Results: i=1; fwd.example;" in first
    )
    result = asyncio.run(verify_arc(first + HEADERS + BODY, resolver))
    assert (result.status, result.instances) == (ArcStatus.PASS, 1)
    second = sealer.seal(first + HEADERS, [BODY], result.status)
    assert second is not None
    result = asyncio.run(verify_arc(second + first + HEADERS + BODY, resolver))
    assert (result.status, result.instances) == (ArcStatus.PASS, 2)
    assert result.method_result().render() == "arc=pass (i=2)"


def test_tampered_body_fails_and_failed_chain_ends() -> None:
    sealer, resolver = _setup()
    sealed = sealer.seal(HEADERS, [BODY], ArcStatus.NONE)
    assert sealed is not None
    result = asyncio.run(verify_arc(sealed + HEADERS + b"Changed\r\n", resolver))
    assert result.status is ArcStatus.FAIL
    # RFC 8617 §5.1.2: we still seal, with cv=fail; after that nobody extends the chain.
    failed = sealer.seal(sealed + HEADERS, [b"Changed\r\n"], result.status)
    assert failed is not None and b"cv=fail" in failed
    assert sealer.seal(failed + sealed + HEADERS, [b"Changed\r\n"], ArcStatus.PASS) is None


def test_missing_key_fails() -> None:
    sealer, _ = _setup()
    sealed = sealer.seal(HEADERS, [BODY], ArcStatus.NONE)
    assert sealed is not None
    result = asyncio.run(verify_arc(sealed + HEADERS + BODY, FakeResolver()))
    assert result.status is ArcStatus.FAIL
