"""What one message may cost the checks: DNS questions per message are bounded (8 DKIM
signatures; ARC chains of at most 50 sets, RFC 8617 §5.2), dkimpy's work runs in the
`Offload` it is given, never on the event loop's thread, and no stranger's key is checked
with Python's own big-integer arithmetic."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dkim  # type: ignore[import-untyped]
import pytest

from dnsserver import FakeResolver
from hato.authcheck.arc import ArcSealer, ArcStatus, verify_arc
from hato.authcheck.bodyhash import hash_key
from hato.authcheck.dkim import (
    MAX_SIGNATURES,
    DkimAlgorithm,
    DkimSigner,
    DkimStatus,
    generate_key,
    load_signing_key,
    verify_dkim,
)
from hato.authcheck.fastverify import FastDKIM
from hato.authcheck.offload import WorkerPool
from hato.model.dns import RdType, TxtRecord
from kit.clock import FakeClock

CLOCK = FakeClock(1_700_000_000.0, 0.0)  # frozen: every signature has t=1700000000

_T = TypeVar("_T")
PEM, RECORD = generate_key(DkimAlgorithm.RSA_SHA256)
HEADERS = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n"
BODY = b"Hello\r\n"


def _resolver(names: list[str]) -> FakeResolver:
    return FakeResolver({(n, RdType.TXT): [TxtRecord((RECORD.encode(),))] for n in names})


def _key_questions(resolver: FakeResolver) -> list[str]:
    return [name for name, _ in resolver.asked if "._domainkey." in name]


class Recording:
    """An Offload that runs the work in a worker pool and notes the threads it ran in."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self._pool = WorkerPool(1)

    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]:
        def noted() -> _T:
            self.threads.append(threading.current_thread().name)
            return work()

        return self._pool(noted)


def test_only_the_first_eight_dkim_signatures_are_looked_up_and_checked() -> None:
    key = load_signing_key(PEM)
    selectors = [f"s{n}" for n in range(20)]
    signatures = b"".join(
        DkimSigner("example.com", s, key, CLOCK).sign(HEADERS, [BODY]) for s in selectors
    )
    resolver = _resolver([f"{s}._domainkey.example.com" for s in selectors])
    offload = Recording()
    results = asyncio.run(verify_dkim(signatures + HEADERS + BODY, resolver, offload=offload))
    assert len(results) == MAX_SIGNATURES == 8
    assert all(r.status is DkimStatus.PASS for r in results)
    assert len(_key_questions(resolver)) == MAX_SIGNATURES
    assert len(offload.threads) == 1 and offload.threads[0].startswith("hato-authcheck")
    assert offload.threads[0] != threading.main_thread().name


def _sets(count: int, *, skip: int = 0) -> bytes:
    """`count` syntactically valid (but unsigned) ARC sets, newest first."""
    out = b""
    for i in range(count, 0, -1):
        if i == skip:
            continue
        cv = b"none" if i == 1 else b"pass"
        out += (
            b"ARC-Seal: i=%d; a=rsa-sha256; cv=%s; d=arc.example; s=as%d; t=1; b=AAAA\r\n"
            b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=relaxed/relaxed; d=arc.example;"
            b" s=ams%d; h=from; bh=AAAA; t=1; b=AAAA\r\n"
            b"ARC-Authentication-Results: i=%d; arc.example; spf=pass\r\n"
        ) % (i, cv, i, i, i, i)
    return out


def test_more_than_fifty_arc_sets_fail_without_a_dns_question() -> None:
    resolver = _resolver([])
    result = asyncio.run(verify_arc(_sets(60) + HEADERS + BODY, resolver))
    # RFC 8617 §5.2 step 1: at most 50 ARC Sets; more is a failed chain.
    assert result.status is ArcStatus.FAIL and "50" in result.reason
    assert _key_questions(resolver) == []


def test_a_chain_with_a_gap_fails_without_a_dns_question() -> None:
    resolver = _resolver([])
    result = asyncio.run(verify_arc(_sets(5, skip=3) + HEADERS + BODY, resolver))
    assert result.status is ArcStatus.FAIL
    assert _key_questions(resolver) == []


def test_a_long_chain_asks_for_every_seal_key_and_the_newest_signature_key_only() -> None:
    resolver = _resolver([])
    asyncio.run(verify_arc(_sets(50) + HEADERS + BODY, resolver))
    asked = set(_key_questions(resolver))
    assert asked == {f"as{i}._domainkey.arc.example" for i in range(1, 51)} | {
        "ams50._domainkey.arc.example"
    }


def test_a_real_chain_still_passes_with_the_checks_in_a_worker_thread() -> None:
    pem, record = generate_key(DkimAlgorithm.RSA_SHA256)
    sealer = ArcSealer("fwd.example", "arc", load_signing_key(pem), "fwd.example", CLOCK)
    resolver = FakeResolver(
        {("arc._domainkey.fwd.example", RdType.TXT): [TxtRecord((record.encode(),))]}
    )
    first = sealer.seal(HEADERS, [BODY], ArcStatus.NONE)
    assert first is not None
    offload = Recording()
    result = asyncio.run(verify_arc(first + HEADERS + BODY, resolver, offload=offload))
    assert (result.status, result.instances) == (ArcStatus.PASS, 1)
    assert len(offload.threads) == 1


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _hostile_record(bits: int = 4096) -> bytes:
    """A key record dkimpy parses but OpenSSL refuses: an exponent larger than the modulus.
    dkimpy's own check of it is pow() in Python: 11 s of CPU at 16,384 bits."""
    modulus = (1 << (bits - 1)) | 0xF00D1  # odd, `bits` long
    exponent = modulus + 2
    numbers = b"".join(
        _der(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big")) for n in (modulus, exponent)
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(_der(0x30, numbers))


@pytest.fixture
def python_rsa(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts dkimpy's pure-Python RSA checks (each is pow() with the key's exponent)."""
    calls: list[int] = []
    real = dkim.RSASSA_PKCS1_v1_5_verify

    def counted(*args: object) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", counted)
    return calls


def test_a_key_openssl_refuses_is_a_permerror_not_python_arithmetic(python_rsa: list[int]) -> None:
    signed = DkimSigner("example.com", "big", load_signing_key(PEM), CLOCK).sign(HEADERS, [BODY])
    message = signed + HEADERS + BODY
    resolver = FakeResolver(
        {("big._domainkey.example.com", RdType.TXT): [TxtRecord((_hostile_record(),))]}
    )
    (result,) = asyncio.run(verify_dkim(message, resolver))
    # RFC 6376 §6.1.2 step 6: a key that cannot be used is a PERMFAIL.
    assert (result.status, result.reason) == (DkimStatus.PERMERROR, "bad key: RSA key not usable")
    # dkimpy's verifier itself, asked directly, verifies nothing with it either.
    record = _hostile_record()
    assert FastDKIM(message).verify(dnsfunc=lambda name, timeout=5: record) is False
    assert python_rsa == []


def test_an_arc_seal_of_a_key_openssl_refuses_fails_without_python_arithmetic(
    python_rsa: list[int],
) -> None:
    sealer = ArcSealer("fwd.example", "arc", load_signing_key(PEM), "fwd.example", CLOCK)
    first = sealer.seal(HEADERS, [BODY], ArcStatus.NONE)
    assert first is not None
    resolver = FakeResolver(
        {("arc._domainkey.fwd.example", RdType.TXT): [TxtRecord((_hostile_record(),))]}
    )
    result = asyncio.run(verify_arc(first + HEADERS + BODY, resolver))
    assert result.status is ArcStatus.FAIL
    assert python_rsa == []


def test_an_instance_of_thousands_of_digits_fails_the_chain() -> None:
    # RFC 8617 §4.2.1: i= is 1*2DIGIT; thousands of digits (a line that long passes with
    # limits.max_text_line = 0) were a ValueError of int(), the session's 421.
    seal = b"ARC-Seal: i=" + b"1" * 5000 + b"; a=rsa-sha256; cv=none; d=a.example; s=s; b=AA\r\n"
    result = asyncio.run(verify_arc(seal + _sets(1) + HEADERS + BODY, _resolver([])))
    assert result.status is ArcStatus.FAIL


def test_a_body_length_of_thousands_of_digits_names_no_body_hash() -> None:
    # RFC 6376 §3.5: l= is 1*76DIGIT; the streamed body hashes (messages past 10 MiB) took
    # int() of any length.
    assert hash_key({b"a": b"rsa-sha256", b"l": b"1" * 5000}) is None
    assert hash_key({b"a": b"rsa-sha256", b"l": b"1" * 76}) is not None
