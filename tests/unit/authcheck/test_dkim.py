"""DKIM signing and verification outcomes: streamed body hash, header list, keys, DNS paths."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest
from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from dnsserver import FakeResolver, FakeValue
from hato.authcheck.canon import relaxed_lines
from hato.authcheck.dkim import (
    DkimAlgorithm,
    DkimError,
    DkimSigner,
    DkimStatus,
    RelaxedBodyHasher,
    generate_key,
    load_signing_key,
    verify_dkim,
)
from hato.model.dns import DnsStatus, RdType, TxtRecord
from hato.model.header import split_header_fields
from kit.clock import FakeClock

CLOCK = FakeClock(1_700_000_000.0, 0.0)  # frozen: every signature has t=1700000000

HEADERS = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nX-Other: 1\r\n\r\n"
BODY = b"line  one \t\r\n\r\nline two\r\n\r\n\r\n"
NAME = "sel._domainkey.example.com"


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),  # RFC 6376 §3.4.4: an empty body stays empty under relaxed
        (b"\r\n\r\n", b""),
        (b"a \t b  \r\n", b"a b\r\n"),
        (b"a\r\n\r\n\r\n", b"a\r\n"),
        (b"a\r\n\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\r\n  \r\n\r\nb\r\n \r\n", b"a\r\n\r\n\r\nb\r\n"),
    ],
)
def test_relaxed_body_any_chunking(body: bytes, canonical: bytes) -> None:
    expected = hashlib.sha256(canonical).digest()
    for size in range(1, len(body) + 2):
        hasher = RelaxedBodyHasher()
        for i in range(0, len(body), size):
            hasher.update(body[i : i + size])
        assert hasher.digest() == expected, size


def _hashed(body: bytes) -> bytes:
    hasher = RelaxedBodyHasher()
    hasher.update(body)
    return hasher.digest()


@given(st.lists(st.sampled_from([b" ", b"\t", b"  \t ", b"a", b"\r\n", b"\r", b"\n"])))
def test_relaxed_body_as_dkimpy(parts: list[bytes]) -> None:
    """The byte-replacement canonicalization gives dkimpy's relaxed body (RFC 6376 §3.4.4)
    for any mix of SP, HTAB, runs of both, bare CR and LF."""
    body = b"".join(parts) + b"\r\n"
    assert _hashed(body) == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def test_relaxed_lines_long_runs() -> None:
    """A run of any length becomes one SP (the halving loop), at the end of a line none."""
    run = b" \t" * 300_000
    assert relaxed_lines(b"a" + run + b"b" + run + b"\r\n" + run + b"\r\n") == b"a b\r\n\r\n"


def _signed(algorithm: DkimAlgorithm, **kwargs: object) -> tuple[bytes, str]:
    pem, record = generate_key(algorithm)
    signer = DkimSigner("Example.COM", "Sel", load_signing_key(pem), CLOCK, **kwargs)  # type: ignore[arg-type]
    return signer.sign(HEADERS, [BODY]), record


def _tags(signature: bytes) -> dict[str, str]:
    value = b"".join(signature.split(b":", 1)[1].split()).decode()
    return dict(p.split("=", 1) for p in value.split(";") if p)


def test_signature_tags_and_header_list() -> None:
    signature, _ = _signed(DkimAlgorithm.ED25519_SHA256, expire_after=3600)
    tags = _tags(signature)
    assert signature.startswith(b"DKIM-Signature: v=1;") and signature.endswith(b"\r\n")
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "ed25519-sha256", "relaxed/relaxed", "example.com", "sel",
    )  # fmt: skip
    assert (tags["t"], tags["x"]) == ("1700000000", "1700003600")
    # Present ones only, over-signed (RFC 6376 §8.15); X-Other is not on the list.
    assert tags["h"] == "from:from:to:to:subject:subject"
    assert all(len(line) <= 78 for line in signature.split(b"\r\n"))


def test_from_signed_even_when_missing() -> None:
    pem, _ = generate_key(DkimAlgorithm.ED25519_SHA256)
    signer = DkimSigner("example.com", "s", load_signing_key(pem), CLOCK, oversign=())
    signature = signer.sign(b"Subject: x\r\n\r\n", [b"x\r\n"])
    assert _tags(signature)["h"] == "from:subject"


def _resolver(value: FakeValue) -> FakeResolver:
    return FakeResolver({(NAME, RdType.TXT): value})


@pytest.mark.parametrize("algorithm", list(DkimAlgorithm))
def test_pass_and_tampering(algorithm: DkimAlgorithm) -> None:
    signature, record = _signed(algorithm)
    resolver = _resolver([TxtRecord((record.encode(),))])
    message = signature + HEADERS + BODY
    (ok,) = asyncio.run(verify_dkim(message, resolver))
    assert (ok.status, ok.domain, ok.selector, ok.identity) == (
        DkimStatus.PASS, "example.com", "sel", "@example.com",
    )  # fmt: skip
    # Relaxed canonicalization survives refolding and trailing blank lines.
    refolded = message.replace(b"Subject: hi", b"Subject:   hi\r\n ") + b"\r\n"
    assert asyncio.run(verify_dkim(refolded, resolver))[0].status is DkimStatus.PASS
    added = signature + b"Subject: spoof\r\n" + HEADERS + BODY  # blocked by over-signing
    assert asyncio.run(verify_dkim(added, resolver))[0].status is DkimStatus.FAIL
    body = message.replace(b"line two", b"line 2")
    assert asyncio.run(verify_dkim(body, resolver))[0].reason == "body hash did not verify"


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [
        (DnsStatus.TEMPFAIL, DkimStatus.TEMPERROR, "key lookup failed: fake SERVFAIL"),
        (DnsStatus.NXDOMAIN, DkimStatus.PERMERROR, "no key record"),
        ([TxtRecord((b"v=DKIM1; k=rsa; p=",))], DkimStatus.PERMERROR, "key revoked"),
        (
            [TxtRecord((b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(32)),))],
            DkimStatus.PERMERROR,
            "key type does not match the signature algorithm",
        ),
    ],
)
def test_key_lookup_outcomes(value: FakeValue, status: DkimStatus, reason: str) -> None:
    signature, _ = _signed(DkimAlgorithm.RSA_SHA256)
    resolver = _resolver(value) if not isinstance(value, DnsStatus) else FakeResolver()
    if value is DnsStatus.TEMPFAIL:
        resolver.tempfail.add("example.com")
    (result,) = asyncio.run(verify_dkim(signature + HEADERS + BODY, resolver))
    assert (result.status, result.reason) == (status, reason)


def test_unsigned_and_broken_signatures() -> None:
    assert asyncio.run(verify_dkim(HEADERS + BODY, FakeResolver())) == ()
    broken = b"DKIM-Signature: v=1; d=example.com\r\n" + HEADERS + BODY
    (result,) = asyncio.run(verify_dkim(broken, FakeResolver()))
    assert (result.status, result.reason) == (DkimStatus.NEUTRAL, "signature syntax error")


def test_keys_load_and_refuse() -> None:
    data = Path("/work/shared/vectors/dkim")
    if data.exists():
        assert load_signing_key((data / "2048_testkey.key").read_bytes()).key.key_size == 2048  # type: ignore[union-attr]
        pkcs8 = load_signing_key((data / "2048_testkey_PKCS8.key").read_bytes())
        assert pkcs8.algorithm is DkimAlgorithm.RSA_SHA256
        raw = load_signing_key((data / "ed25519test.key").read_bytes())
        assert raw.algorithm is DkimAlgorithm.ED25519_SHA256
    with pytest.raises(DkimError):
        load_signing_key(b"not a key")
    with pytest.raises(DkimError):
        generate_key(DkimAlgorithm.RSA_SHA256, rsa_bits=512)


def test_split_header_fields_offsets() -> None:
    block = b"A: 1\r\nB: 2\r\n  more\r\nC: 3\r\n\r\nbody: no\r\n"
    fields = split_header_fields(block)
    assert [f.name for f in fields] == [b"A", b"B", b"C"]
    assert block[fields[1].start : fields[1].end] == b"B: 2\r\n  more\r\n"
