"""Hypothesis: whatever header fields a message carries, the inbound checks give a verdict.

RFC 8617 §5.2 and RFC 6376 §6.1: a signature or chain that cannot be parsed is a result
(fail / permerror / neutral), never an error of ours. A real chain (sealed by `ArcSealer`) is
mixed with fragments of tag lists folded every legal way (RFC 6376 §3.2: FWS around tags), so
the fuzzing reaches dkimpy's parsers past the first check, where the IndexError of issue 14
was.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsserver import FakeResolver
from hato.authcheck.arc import ArcSealer, ArcStatus, verify_arc
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key, verify_dkim
from hato.authcheck.results import find_forged, without_fields
from hato.intake.inbound import InboundChecker
from hato.model.dns import RdType, TxtRecord
from kit.clock import FakeClock

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


_PEM, _RECORD = generate_key(DkimAlgorithm.RSA_SHA256, 1024)
_SEALER = ArcSealer(
    "fwd.example", "arc", load_signing_key(_PEM), "fwd.example", FakeClock(1_700_000_000.0, 0.0)
)
_RESOLVER = FakeResolver(
    {
        ("arc._domainkey.fwd.example", RdType.TXT): [TxtRecord((_RECORD.encode(),))],
        ("fwd.example", RdType.TXT): ["v=spf1 ip4:127.0.0.1 -all"],
        ("_dmarc.fwd.example", RdType.TXT): ["v=DMARC1; p=reject"],
    }
)
_HEADERS = (
    b"From: a@fwd.example\r\nTo: b@dest.example\r\nSubject: hi\r\nDate: x\r\n"
    b"Message-ID: <a@b>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
)
_BODY = b"Hello\r\n"
_SEALED = _SEALER.seal(_HEADERS, [_BODY], ArcStatus.NONE) or b""

NAMES = [
    b"ARC-Seal",
    b"ARC-Message-Signature",
    b"ARC-Authentication-Results",
    b"DKIM-Signature",
    b"From",
    b"Authentication-Results",
]
PIECES = [
    b"i=1", b"i=2", b"i=", b"i=x", b"i=99", b"a=rsa-sha256", b"a=ed25519-sha256", b"a=",
    b"b=", b"b=AAAA", b"bh=", b"bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", b"cv=pass",
    b"cv=none", b"cv=fail", b"cv=", b"d=fwd.example", b"d=", b"d=\xc3\xa9.example", b"s=arc",
    b"s=", b"h=from:to", b"h=", b"h=arc-seal", b"c=relaxed/relaxed", b"c=simple", b"c=x/",
    b"t=1", b"t=x", b"v=1", b";", b"; ", b"=", b" ", b"\r\n\t", b"\r\n ", b"fwd.example",
    b"spf=pass", b"<a@fwd.example>", b"a@", b"@", b",", b"(", b")", b"\"", b"\\",
]  # fmt: skip

field_value = st.lists(st.sampled_from(PIECES), max_size=14).map(b"".join)
field = st.tuples(st.sampled_from(NAMES), field_value).map(lambda p: p[0] + b":" + p[1] + b"\r\n")


def _sealed_fields() -> list[bytes]:
    fields: list[bytes] = []
    for line in _SEALED.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        elif line:
            fields.append(line + b"\r\n")
    return fields


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    ours = draw(st.lists(st.sampled_from(_sealed_fields()), max_size=4))
    # The same fields refolded: tab or space, or a fold before any tag (RFC 6376 §3.2).
    refold = draw(st.sampled_from([b"\r\n\t", b"\r\n ", b"\r\n  \t"]))
    ours = [f.replace(b"\r\n ", refold).replace(refold + b"\r\n", b"\r\n") for f in ours]
    theirs = draw(st.lists(field, max_size=4))
    mixed = draw(st.permutations(ours + theirs))
    return b"".join(mixed) + _HEADERS + _BODY


def test_the_sealed_chain_passes_however_it_is_refolded() -> None:
    for fold in (b"\r\n ", b"\r\n\t", b"\r\n \t "):
        message = _SEALED.replace(b"\r\n ", fold) + _HEADERS + _BODY
        result = asyncio.run(verify_arc(message, _RESOLVER))
        assert result.status is ArcStatus.PASS, (fold, result.reason)


@BOUNDED
@given(messages())
def test_arc_and_dkim_give_a_result_for_any_fields(message: bytes) -> None:
    arc = asyncio.run(verify_arc(message, _RESOLVER))
    assert arc.status in set(ArcStatus)
    for result in asyncio.run(verify_dkim(message, _RESOLVER)):
        assert result.reason or result.status.value == "pass"


@BOUNDED
@given(messages())
def test_the_inbound_verdict_never_raises(message: bytes) -> None:
    checker = InboundChecker(
        _RESOLVER,
        authserv_id="mx.dest.example",
        clock=FakeClock(1_700_000_000.0, 0.0),
        rng=random.Random(1),
    )
    verdict = asyncio.run(
        checker.check(client_ip="127.0.0.1", helo="fwd.example", mail_from=None, message=message)
    )
    assert verdict.header.startswith(b"Authentication-Results: mx.dest.example;")


@BOUNDED
@given(messages(), st.sampled_from(list(ArcStatus)))
def test_forwarding_seals_or_declines_for_any_fields(message: bytes, chain: ArcStatus) -> None:
    # What the server does after the checks when an alias forwards: strip forged results
    # (RFC 8601 §5), then add an ARC set (RFC 8617 §5.1) or decline to extend a chain.
    head, _, body = message.partition(b"\r\n\r\n")
    block = head + b"\r\n"
    block = without_fields(block, find_forged(block, "fwd.example"))
    sealed = _SEALER.seal(block, [body], chain)
    assert sealed is None or sealed.startswith(b"ARC-Seal: ")
