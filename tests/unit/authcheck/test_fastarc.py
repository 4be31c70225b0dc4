"""FastARC gives dkimpy's ARC verdicts, canonicalizing only what each signature covers and
verifying only the newest ARC-Message-Signature (RFC 8617 §5.2)."""

from __future__ import annotations

import random
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from dkim import canonicalization

from hato.authcheck import fastverify
from hato.authcheck.arc import ArcSealer, ArcStatus
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key
from hato.authcheck.fastarc import FastARC
from hato.authcheck.fastverify import FastDKIM
from kit.clock import FakeClock

CLOCK = FakeClock(1_700_000_000.0, 0.0)
PEM, RECORD = generate_key(DkimAlgorithm.RSA_SHA256)
HEAD = b"From: Alice <a@example.com>\r\nTo: b@example.net\r\nSubject: hi\r\n"
BODY = b"Hello  there\r\n\r\n"


def _dns(name: bytes, timeout: int = 5) -> bytes:
    return RECORD.encode("ascii")


def _chain(sets: int, fillers: int = 0) -> bytes:
    """A message that passed `sets` hops, each sealing with its own selector (one key)."""
    key = load_signing_key(PEM)
    head = HEAD + b"".join(b"X-Filler-%d: v  %d\r\n" % (n, n) for n in range(fillers)) + b"\r\n"
    for i in range(1, sets + 1):
        sealer = ArcSealer("arc.example", f"s{i}", key, f"hop{i}.arc.example", CLOCK)
        status = ArcStatus.NONE if i == 1 else ArcStatus.PASS
        added = sealer.seal(head, [BODY], status, results=["spf=pass"])
        assert added is not None
        head = added + head
    return head + BODY


def _verdict(cls: type, message: bytes) -> str:
    try:
        cv, details, reason = cls(message).verify(dnsfunc=_dns)
    except (dkim.DKIMException, LookupError, ValueError) as error:
        return type(error).__name__
    # What the verdict rests on: the chain status, and every seal's own validity.
    return f"{cv!r} {[(d['instance'], d['as-valid'], d['cv']) for d in details]} {reason}"


def test_a_chain_of_fifty_sets_canonicalizes_each_signed_field_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dkimpy canonicalized every field of the header section for each of the chain's 100
    # signatures: 50 sets and 800 other fields were 95,000 fields per message (~250 ms).
    message = _chain(50, fillers=800)
    made: list[int] = []
    relaxed = canonicalization.Relaxed.canonicalize_headers

    def counted(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        made.append(len(headers))
        return list(relaxed(headers))

    monkeypatch.setattr(canonicalization.Relaxed, "canonicalize_headers", counted)
    cv, details, _ = FastARC(message).verify(dnsfunc=_dns)
    assert cv == dkim.CV_Pass and len(details) == 50
    # 150 ARC fields found once, each canonicalized once more for the seals, the newest
    # AMS's 3 fields, and each of the 51 signatures' own field: 150 + 150 + 3 + 51.
    assert sum(made) <= 360


def test_only_the_newest_message_signature_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 8617 §5.2 step 5 validates AMS[N] only; dkimpy verified all N (with its body hash,
    # the body canonicalized again for each c= a stranger chose) and read only the newest.
    message = _chain(10)
    checked: list[bytes] = []
    verify_sig = FastARC.verify_sig

    def noted(self: FastARC, sig: dict[bytes, bytes], *args: Any) -> bool:
        checked.append(b"as" if b"cv" in sig else b"ams")
        return verify_sig(self, sig, *args)

    monkeypatch.setattr(FastARC, "verify_sig", noted)
    cv, details, _ = FastARC(message).verify(dnsfunc=_dns)
    assert cv == dkim.CV_Pass
    assert checked.count(b"ams") == 1 and checked.count(b"as") == 10
    assert details[0]["ams-valid"] and not any(d["ams-valid"] for d in details[1:])


def test_the_body_is_canonicalized_once_for_several_signatures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sig = dkim.sign(HEAD + b"\r\n" + BODY, b"sel", b"example.com", PEM,
                    canonicalize=(b"relaxed", b"relaxed"))  # fmt: skip
    message = sig + sig + HEAD + b"\r\n" + BODY
    made: list[bytes] = []
    body = fastverify._canonical_body

    def counted(canon: object, data: bytes) -> bytes:
        made.append(data)
        return body(canon, data)

    monkeypatch.setattr(fastverify, "_canonical_body", counted)
    checker = FastDKIM(message)
    assert checker.verify(0, dnsfunc=_dns) and checker.verify(1, dnsfunc=_dns)
    assert len(made) == 1


def _mutations(message: bytes, rng: random.Random) -> bytes:
    """One random change of a sealed message: a field dropped, repeated, moved, recased,
    refolded or altered; the body changed."""
    head, body = message.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    fields: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    at = rng.randrange(len(fields))
    match rng.randrange(7):
        case 0:
            del fields[at]
        case 1:
            fields.insert(rng.randrange(len(fields)), fields[at])
        case 2:
            fields.insert(rng.randrange(len(fields)), fields.pop(at))
        case 3:
            name, value = fields[at].split(b":", 1)
            fields[at] = name.upper() + b":" + value
        case 4:
            fields[at] = fields[at].replace(b"; ", b";\r\n\t", 1)
        case 5:
            fields[at] = fields[at].replace(b"i=", b"i=1", 1)
        case _:
            body += b"x\r\n"
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def test_same_verdicts_as_dkimpy_on_changed_chains() -> None:
    chains = [_chain(1), _chain(3, fillers=2)]
    rng = random.Random(8617)
    for message in chains:
        assert _verdict(FastARC, message) == _verdict(dkim.ARC, message)
    for _ in range(300):
        message = rng.choice(chains)
        for _ in range(rng.randint(1, 3)):
            message = _mutations(message, rng)
        assert _verdict(FastARC, message) == _verdict(dkim.ARC, message), message
