"""The streaming DKIM body hash (authcheck/bodyhash.py) against dkimpy's, which hashes the whole
body at once: on the RFC 6376 / RFC 8463 example messages and dkimpy's test messages, on any
chunking of them (Hypothesis), with l=, and through a whole verification of the examples."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.canonicalization import Relaxed, Simple  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsserver import FakeResolver, FakeValue
from hato.authcheck.bodyhash import SPILL_AT, BodyHash, SignatureBodies
from hato.authcheck.dkim import DkimStatus, header_block, verify_dkim
from hato.model.dns import RdType, TxtRecord

DATA = Path("/work/shared/vectors/dkim")
MESSAGES = sorted(
    p for p in DATA.glob("*") if p.suffix == ".msg" or p.name.startswith("test.message")
)
KEYS = [(False, "sha256", None), (True, "sha256", None), (True, "sha256", 10), (False, "sha1", 3)]


def _dkimpy(body: bytes, relaxed: bool, algorithm: str, length: int | None) -> bytes:
    """What dkimpy hashes (dkim.DomainSigner.verify_sig_process): its own parse of the body."""
    _, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + body)
    canonical = (Relaxed if relaxed else Simple).canonicalize_body(parsed)
    return hashlib.new(algorithm, canonical[:length] if length is not None else canonical).digest()


def _streamed(chunks: list[bytes], relaxed: bool, algorithm: str, length: int | None) -> bytes:
    hasher = BodyHash(relaxed, algorithm, length)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


def _body(path: Path) -> bytes:
    body: bytes = dkim.rfc822_parse(path.read_bytes())[1]
    return body


def test_the_vectors_are_there() -> None:
    assert len(MESSAGES) >= 6


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name)
@pytest.mark.parametrize("key", KEYS)
def test_vector_bodies_hash_as_dkimpy_hashes_them(
    path: Path, key: tuple[bool, str, int | None]
) -> None:
    body = _body(path)
    assert _streamed([body], *key) == _dkimpy(body, *key)
    assert _streamed([bytes([b]) for b in body], *key) == _dkimpy(body, *key)


ODD_BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"  \r\n \t \r\n",
    b"a",
    b"a  ",
    b"a \t b \r\n\r\n \r\n",
    b"a\r\r\nb\rc \r \r\n",
    b"lf only\nline two  \n\n",
    b"x" * (3 * SPILL_AT) + b" \t " * 999 + b"y\r\n" + b" " * (2 * SPILL_AT) + b"\r\n",
    b"\r" * (2 * SPILL_AT) + b"\r\n\r\n",
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
@pytest.mark.parametrize("key", KEYS)
def test_edge_bodies_hash_as_dkimpy_hashes_them(
    body: bytes, key: tuple[bool, str, int | None]
) -> None:
    assert _streamed([body], *key) == _dkimpy(body, *key)


_ALPHABET = st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b".", b"\xc3\xa9"])
_BODIES = st.lists(_ALPHABET, max_size=80).map(b"".join) | st.sampled_from(
    [_body(p) for p in MESSAGES]
)


@settings(max_examples=300, deadline=None)
@given(
    body=_BODIES,
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
    key=st.sampled_from(KEYS),
)
def test_any_chunking_gives_dkimpys_hash(
    body: bytes, cuts: list[int], key: tuple[bool, str, int | None]
) -> None:
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _streamed(chunks, *key) == _dkimpy(body, *key)


@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400_000), max_size=6))
def test_long_lines_spilled_at_any_point_hash_the_same(cuts: list[int]) -> None:
    body = ODD_BODIES[9] + b"tail without end \t"
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    for key in KEYS[:2]:
        assert _streamed(chunks, *key) == _dkimpy(body, *key)


def _rfc8463_resolver() -> FakeResolver:
    # RFC 8463 Appendix A.2: brisbane (Ed25519, from the A.1 private key) and test (RSA).
    seed = base64.b64decode((DATA / "rfc8032_7_1.key").read_bytes())
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    records = {
        "brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p="
        + base64.b64encode(public).decode(),
        "test._domainkey.football.example.com": (DATA / "test.txt").read_text().strip(),
    }
    table: dict[tuple[str, RdType], FakeValue] = {
        (name, RdType.TXT): [TxtRecord((value.encode(),))] for name, value in records.items()
    }
    return FakeResolver(table)


def _verify_streamed(message: bytes) -> list[tuple[DkimStatus, str]]:
    head = header_block(message)
    bodies = SignatureBodies(head)
    for i in range(len(head), len(message), 7):
        bodies.update(message[i : i + 7])
    results = asyncio.run(verify_dkim(head, _rfc8463_resolver(), body_hashes=bodies.digests()))
    return [(r.status, r.reason) for r in results]


def _example() -> bytes:
    raw = (DATA / "rfc6376.signed.msg").read_bytes()
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_rfc8463_example_passes_with_a_streamed_body_hash() -> None:
    assert _verify_streamed(_example()) == [(DkimStatus.PASS, "")] * 2


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"We lost the game.", b"We won the game.", "body hash did not verify"),
        (b"Subject: Is dinner ready?", b"Subject: Is lunch ready?", "signature did not verify"),
    ],
)
def test_streamed_tampering_fails(old: bytes, new: bytes, reason: str) -> None:
    assert _verify_streamed(_example().replace(old, new)) == [(DkimStatus.FAIL, reason)] * 2
