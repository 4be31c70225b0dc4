"""ARC (RFC 8617): verifying received chains with dkimpy, sealing on `cryptography` when we forward.

Theory of operation. Verification works like DKIM's: the key records named by every
ARC-Message-Signature and ARC-Seal are fetched through the `Resolver` seam first, then dkimpy's
ARC validator runs with a `dnsfunc` that answers from them. Sealing adds one ARC Set (RFC 8617
§4.1): an ARC-Authentication-Results copying our own Authentication-Results, an
ARC-Message-Signature (a DKIM signature without v=, relaxed/relaxed, body streamed), and an
ARC-Seal over all ARC Sets. Tags are written in the "standardized" order of the ARC test suite
(sorted by name), so the suite's expected signatures can be reproduced byte for byte.

Imports: model (DNS seam, Clock), the DKIM primitives of `hato.authcheck.dkim`, dkimpy.
"""

from __future__ import annotations

import base64
import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from hato.authcheck.dkim import (
    DEFAULT_SIGNED_HEADERS,
    DKIMPY_ERRORS,
    RelaxedBodyHasher,
    SigningKey,
    answer_dnsfunc,
    domain_ascii,
    fetch_keys,
    header_block,
    header_hash_input,
    key_name,
    relaxed_header,
)
from hato.authcheck.fastarc import FastARC
from hato.authcheck.offload import Offload, in_thread
from hato.authcheck.results import HEADER_NAME, MethodResult, claims_id, resinfo_entries
from hato.model.dns import DnsAnswer, Resolver
from hato.model.header import HeaderField, split_header_fields
from hato.model.seams import Clock

AAR = b"arc-authentication-results"
AMS = b"arc-message-signature"
SEAL = b"arc-seal"
_SET_ORDER = (AAR, AMS, SEAL)  # RFC 8617 §5.1.1: within an ARC Set, AAR then AMS then AS
MAX_INSTANCE = 50  # RFC 8617 §4.2.1: i= is 1 to 50
_FOLD_WIDTH = 76


class ArcStatus(enum.Enum):
    """RFC 8617 §4.4: the chain validation status, also the AR ``arc=`` result."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class ArcSetResult:
    instance: int
    domain: str  # d= of the ARC-Seal
    selector: str
    cv: str  # as the seal claims it
    message_signature_valid: bool
    seal_valid: bool


@dataclass(frozen=True, slots=True)
class ArcResult:
    status: ArcStatus
    instances: int = 0  # the highest i= found
    reason: str = ""
    sets: tuple[ArcSetResult, ...] = ()

    def method_result(self) -> MethodResult:
        # RFC 8617 §10.1 registers the "arc" method; header.oldest-pass is optional.
        comment = f"i={self.instances}" if self.instances else ""
        reason = "" if self.status is ArcStatus.PASS else self.reason
        return MethodResult("arc", self.status.value, reason=reason, comment=comment)


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return dict(parse_tag_value(value))
    except (InvalidTagValueList, ValueError):
        return None


def _instance(field: HeaderField) -> int:
    tags = _tags(field.value.split(b";", 1)[0] if field.name.lower() == AAR else field.value)
    raw = (tags or {}).get(b"i", b"")
    # RFC 8617 §4.2.1: i= is 1*2DIGIT. Longer is no instance (0: the chain fails), never an
    # int() of thousands of digits (a ValueError; a line can be that long with
    # limits.max_text_line = 0).
    return int(raw) if raw.isdigit() and len(raw) <= 9 else 0


def arc_fields(fields: Sequence[HeaderField]) -> list[tuple[int, HeaderField]]:
    return [(_instance(f), f) for f in fields if f.name.lower() in _SET_ORDER]


async def verify_arc(
    message: bytes,
    resolver: Resolver,
    *,
    min_rsa_bits: int = 1024,
    offload: Offload = in_thread,
    fields: Sequence[HeaderField] | None = None,
) -> ArcResult:
    """RFC 8617 §5.2: validate the ARC chain of `message` (headers and body).

    The structure is judged first, without DNS; then only the keys the verdict needs are
    fetched (every ARC-Seal's and the newest ARC-Message-Signature's: at most 51 questions),
    and dkimpy (`FastARC`) runs in `offload`. Older ARC-Message-Signatures are not checked
    (§5.2 step 5 reads AMS[N] only; `FastARC` reports them invalid without hashing the body
    again, even when a seal's key is theirs too).
    `fields`: the header section already split (`split_header_fields`), when the caller has it."""
    if fields is None:
        fields = split_header_fields(header_block(message))
    found = arc_fields(fields)
    if not found:
        return ArcResult(ArcStatus.NONE, reason="no ARC sets")
    broken = _structure_problem(found)
    if broken:
        return ArcResult(ArcStatus.FAIL, max(i for i, _ in found), broken)
    newest = max(i for i, _ in found)
    names = []
    for instance, field in found:
        name = field.name.lower()
        if name == AAR or (name == AMS and instance != newest):
            continue
        tags = _tags(field.value)
        if tags and tags.get(b"d") and tags.get(b"s"):
            names.append(
                key_name(
                    tags[b"s"].decode("ascii", "replace"), tags[b"d"].decode("ascii", "replace")
                )
            )
    answers = await fetch_keys(resolver, names)
    refolded = _refold_for_dkimpy(message, fields)
    return await offload(functools.partial(_validate, refolded, answers, min_rsa_bits))


def _structure_problem(found: list[tuple[int, HeaderField]]) -> str:
    """Why the chain fails before any signature is checked, or "" (RFC 8617 §5.2 steps 1-3)."""
    instances = sorted({i for i, _ in found})
    if instances[-1] > MAX_INSTANCE or len(instances) > MAX_INSTANCE:
        # RFC 8617 §5.2 step 1: more than 50 ARC Sets: the chain fails.
        return f"more than {MAX_INSTANCE} ARC sets"
    if instances != list(range(1, len(instances) + 1)):
        # RFC 8617 §5.2 step 3.2: instances form 1..N without gaps (i=0 or junk is not one).
        return "ARC set instances are not 1 to N"
    for instance in instances:
        names = sorted(f.name.lower() for i, f in found if i == instance)
        if names != sorted(_SET_ORDER):
            # RFC 8617 §5.2 step 3.1: exactly one AAR, AMS and AS per set.
            return f"ARC set {instance} is incomplete or repeated"
    return ""


def _validate(message: bytes, answers: Mapping[str, DnsAnswer], min_rsa_bits: int) -> ArcResult:
    """dkimpy's part: CPU only, and picklable (it may run in another process)."""
    dnsfunc = answer_dnsfunc(answers)
    try:
        validator = FastARC(message, minkey=min_rsa_bits)
        cv, details, reason = validator.verify(dnsfunc=dnsfunc)
    except DKIMPY_ERRORS as error:
        # RFC 8617 §5.2: a chain that cannot be parsed or validated is "fail".
        return ArcResult(ArcStatus.FAIL, reason=f"{type(error).__name__}: {error}")
    sets = tuple(
        ArcSetResult(
            instance=int(d["instance"]),
            domain=bytes(d.get("as-domain", b"")).decode("ascii", "replace"),
            selector=bytes(d.get("as-selector", b"")).decode("ascii", "replace"),
            cv=bytes(d.get("cv", b"")).decode("ascii", "replace"),
            message_signature_valid=bool(d.get("ams-valid")),
            seal_valid=bool(d.get("as-valid")),
        )
        for d in details
    )
    instances = max((s.instance for s in sets), default=0)
    status = {dkim.CV_Pass: ArcStatus.PASS, dkim.CV_None: ArcStatus.NONE}.get(cv, ArcStatus.FAIL)
    return ArcResult(status, instances, str(reason), sets)


def _refold_for_dkimpy(message: bytes, fields: Sequence[HeaderField]) -> bytes:
    """The message with each ARC-Message-Signature refolded where dkimpy would miss it.

    dkimpy (1.1.8) finds the raw AMS of instance N by looking for `` i=N;`` in the field, so a
    field folded with a tab before ``i=N;`` (legal: RFC 6376 §3.2 allows FWS around every
    tag, and it is how many signers fold) makes it raise IndexError. RFC 8617 §4.1.2: the AMS
    is hashed with relaxed header canonicalization (unless c= says simple), which turns every
    fold into one space (RFC 6376 §3.4.2), so refolding with a space changes nothing signed.
    `fields`: the header section of `message`, split (the split made once per message)."""
    out: list[bytes] = []
    done = 0
    for field in fields:
        if field.name.lower() != AMS:
            continue
        refolded = _dkimpy_refold(field)
        if refolded != field.raw:
            out += [message[done : field.start], refolded]
            done = field.end
    return b"".join(out) + message[done:] if out else message


_FOLD = re.compile(rb"\r?\n[ \t]+")


def _dkimpy_refold(field: HeaderField) -> bytes:
    tags = _tags(field.value)
    if tags is None or b"i" not in tags:
        return field.raw
    wanted = b" i=" + tags[b"i"] + b";"
    canon = tags.get(b"c", b"relaxed").split(b"/")[0].strip().lower()
    if wanted in field.value.lower() or canon != b"relaxed":
        return field.raw
    name, value = field.raw.split(b":", 1)
    # RFC 6376 §3.4.2: relaxed canonicalization ignores WSP after the colon and makes every
    # FWS one SP, so " " after the colon and "CRLF SP" for each fold sign the same bytes.
    value = _FOLD.sub(b"\r\n ", value)
    if not value[:1].isspace():
        value = b" " + value
    return name + b":" + value


def our_results(header_block: bytes, authserv_id: str) -> list[str]:
    """The entries of every Authentication-Results field of ours, in order (what the AAR
    copies: RFC 8617 §4.1.1)."""
    entries: list[str] = []
    for field in split_header_fields(header_block):
        if field.name.lower() == HEADER_NAME.lower() and claims_id(field.value, authserv_id):
            entries.extend(resinfo_entries(field.value)[1])
    return entries


class ArcSealer:
    """Adds our ARC Set to a message we forward (RFC 8617 §5.1)."""

    def __init__(
        self,
        domain: str,
        selector: str,
        key: SigningKey,
        authserv_id: str,
        clock: Clock,
        *,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    ) -> None:
        self.domain = domain_ascii(domain)
        self.selector = selector.lower()
        self.key = key
        self.authserv_id = authserv_id
        self._clock = clock
        # RFC 8617 §4.1.2: the AMS MUST NOT sign ARC-Seal; ARC and AR fields change per hop.
        skip = {SEAL, AMS, AAR, HEADER_NAME.lower(), b"dkim-signature"}
        self._headers = tuple(h.lower() for h in headers if h.lower().encode() not in skip)

    def seal(
        self,
        header_block: bytes,
        body_chunks: Iterable[bytes],
        chain: ArcStatus,
        *,
        results: Sequence[str] | None = None,
    ) -> bytes | None:
        """ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results fields to prepend,
        or None when the chain must not be extended. `chain`: what `verify_arc` found.
        `results`: the AAR entries; by default our Authentication-Results in the block."""
        fields = split_header_fields(header_block)
        existing = arc_fields(fields)
        instance = max((i for i, _ in existing), default=0) + 1
        if _latest_cv(existing) == "fail" or instance > MAX_INSTANCE:
            # RFC 8617 §5.2 step 2: a chain whose latest seal says cv=fail is over; §4.2.1:
            # at most 50 sets.
            return None
        if (instance == 1) != (chain is ArcStatus.NONE):
            # RFC 8617 §4.4: cv=none only for i=1; a later set without a verdict is a failure.
            chain = ArcStatus.NONE if instance == 1 else ArcStatus.FAIL
        entries = (
            list(results) if results is not None else our_results(header_block, self.authserv_id)
        )
        aar_value = f"i={instance}; {self.authserv_id}"
        for entry in entries or ["none"]:
            aar_value += ";\r\n\t" + entry
        aar = b"ARC-Authentication-Results: " + aar_value.encode("utf-8") + b"\r\n"
        ams = self._message_signature(fields, body_chunks, instance)
        seal = self._seal(existing, aar, ams, instance, chain)
        return seal + ams + aar

    def _message_signature(
        self, fields: list[HeaderField], body_chunks: Iterable[bytes], instance: int
    ) -> bytes:
        hasher = RelaxedBodyHasher()
        for chunk in body_chunks:
            hasher.update(chunk)
        present = {f.name.lower().decode("ascii", "replace") for f in fields}
        # RFC 8617 §4.1.2 (as RFC 6376 §5.4): From MUST be signed.
        names = [n for n in self._headers if n in present or n == "from"]
        signed: list[str] = []
        for name in names:
            count = sum(1 for f in fields if f.name.lower().decode("ascii", "replace") == name)
            signed.extend([name] * max(count, 1))
        tags = [
            ("a", self.key.algorithm.value),
            ("b", ""),
            ("bh", base64.b64encode(hasher.digest()).decode("ascii")),
            ("c", "relaxed/relaxed"),
            ("d", self.domain),
            ("h", ":".join(signed)),
            ("i", str(instance)),
            ("s", self.selector),
            ("t", str(int(self._clock.now()))),
        ]
        unsigned = _format("ARC-Message-Signature", tags, None)
        data = header_hash_input(fields, signed) + _canon_last(unsigned)
        return _format("ARC-Message-Signature", tags, self.key.sign(data))

    def _seal(
        self,
        existing: list[tuple[int, HeaderField]],
        aar: bytes,
        ams: bytes,
        instance: int,
        chain: ArcStatus,
    ) -> bytes:
        tags = [
            ("a", self.key.algorithm.value),
            ("b", ""),
            ("cv", chain.value),
            ("d", self.domain),
            ("i", str(instance)),
            ("s", self.selector),
            ("t", str(int(self._clock.now()))),
        ]
        unsigned = _format("ARC-Seal", tags, None)
        ours = [_canon(aar), _canon(ams)]
        if chain is ArcStatus.FAIL:
            # RFC 8617 §5.1.2: sealing a failed chain, the seal covers only its own set.
            data = b"".join(ours)
        else:
            # RFC 8617 §5.1.1: every set in instance order, AAR, AMS, AS within each.
            ordered = sorted(existing, key=lambda p: (p[0], _SET_ORDER.index(p[1].name.lower())))
            data = b"".join(relaxed_header(f.name, f.value) for _, f in ordered) + b"".join(ours)
        data += _canon_last(unsigned)
        return _format("ARC-Seal", tags, self.key.sign(data))


def _latest_cv(existing: list[tuple[int, HeaderField]]) -> str:
    seals = [(i, f) for i, f in existing if f.name.lower() == SEAL]
    if not seals:
        return ""
    tags = _tags(max(seals, key=lambda p: p[0])[1].value) or {}
    return tags.get(b"cv", b"").decode("ascii", "replace").strip().lower()


def _canon(field: bytes) -> bytes:
    name, value = field.split(b":", 1)
    return relaxed_header(name, value)


def _canon_last(field: bytes) -> bytes:
    # RFC 6376 §3.7 (used by RFC 8617 §5.1): the field being signed goes last, b= empty,
    # without its final CRLF.
    return _canon(field)[:-2]


def _format(name: str, tags: Sequence[tuple[str, str]], signature: bytes | None) -> bytes:
    """``Name: a=..; b=..; ...`` folded at tag boundaries; b= on a line of its own."""
    lines: list[str] = []
    line = name + ":"
    for index, (key, value) in enumerate(tags):
        piece = f"{key}={value}" + (";" if index < len(tags) - 1 else "")
        if key == "b":
            # b= is not folded: the seal signs the AMS as written, and the ARC suite's
            # "standardized" form (which we reproduce) has no whitespace inside b=. Its
            # line stays far below RFC 5322 §2.1.1's 998 octets (684 for RSA-4096).
            text = base64.b64encode(signature).decode("ascii") if signature else ""
            lines.append(line)
            lines.append(f" b={text};")
            line = ""
            continue
        if line and len(line) + 1 + len(piece) > _FOLD_WIDTH:
            lines.append(line)
            line = ""
        # Continuation lines start with SP, not HTAB: dkimpy's verifier (1.1.8) finds the AMS
        # of instance N by the text " i=N;", so "CRLF HTAB i=1;" made it fail on our seals
        # (RFC 6376 §3.2 allows either; relaxed canonicalization signs the same bytes).
        line = (line + " " if line else " ") + piece
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
