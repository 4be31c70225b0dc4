"""DKIM verification (RFC 6376 §6) with dkimpy, which never touches DNS itself.

The selector records of every signature (at most MAX_SIGNATURES) are fetched first through the
async `Resolver` seam, and dkimpy's `dnsfunc` hook answers from that dict. DNS outcomes that
decide a result on their own (no key, temporary failure) are settled before dkimpy runs, and
dkimpy itself runs in an `Offload` (a worker thread), never on the event loop. The pre-fetch
and the `dnsfunc` are shared with ARC (arc.py).

Imports: model (DNS seam), dkimpy. No I/O of its own.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from hato.authcheck.bodyhash import HashedBodyDKIM
from hato.authcheck.fastverify import FastDKIM, parsed_key
from hato.authcheck.offload import Offload, in_thread
from hato.model.dns import DnsAnswer, DnsNameError, DnsStatus, RdType, Resolver, normalize_name
from hato.model.header import HeaderField, split_header_fields

# A cap of ours: each signature costs a DNS question and a pass over the body (RFC 6376 §6.1
# lets a verifier limit the signatures it checks).
MAX_SIGNATURES = 8


class DkimStatus(enum.Enum):
    """RFC 8601 §2.7.1 result values for the dkim method."""

    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's verdict; `reason` is for the log and the header comment."""

    status: DkimStatus
    domain: str = ""  # d=
    selector: str = ""  # s=
    reason: str = ""
    algorithm: str = ""  # a=
    identity: str = ""  # i= (RFC 8601 header.i)
    signature_prefix: str = ""  # first 8 characters of b= (RFC 6008 header.b)


def key_name(selector: str, domain: str) -> str:
    # RFC 6376 §3.6.2.1: the key lives at selector._domainkey.domain.
    return normalize_name(f"{selector}._domainkey.{domain}")


async def fetch_keys(resolver: Resolver, names: Iterable[str]) -> dict[str, DnsAnswer]:
    """TXT answers for every key name, asked concurrently; bad names count as NXDOMAIN."""
    wanted = sorted({normalize_name(n) for n in names})

    async def one(name: str) -> DnsAnswer:
        try:
            return await resolver.query(name, RdType.TXT)
        except DnsNameError as error:
            return DnsAnswer(name, RdType.TXT, DnsStatus.NXDOMAIN, detail=str(error))

    if len(wanted) == 1:  # the common case: no task group and task to make per message
        return {wanted[0]: await one(wanted[0])}
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(n)) for n in wanted]
    return {name: task.result() for name, task in zip(wanted, tasks, strict=True)}


DnsFunc = Callable[..., bytes]

# What dkimpy raises on a message or field it cannot parse: its own DKIMException, and (seen on
# odd but legal folding and on fuzzed input) IndexError, KeyError, ValueError, TypeError and
# AttributeError from inside its parsers. RFC 6376 §6.1 / RFC 8617 §5.2: a signature or
# chain that cannot be parsed gets a result (permerror / neutral / fail), never an error of ours.
DKIMPY_ERRORS: tuple[type[Exception], ...] = (
    dkim.DKIMException,
    LookupError,
    ValueError,
    TypeError,
    AttributeError,
)


def answer_dnsfunc(answers: Mapping[str, DnsAnswer]) -> DnsFunc:
    """dkimpy's `dnsfunc`: the first TXT record of a pre-fetched answer, else nothing."""

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        answer = answers.get(normalize_name(text))
        texts = answer.texts() if answer is not None else ()
        # RFC 6376 §3.6.2.2: with several key records the verifier may pick one.
        return texts[0] if texts else b""

    return dnsfunc


def header_block(message: bytes) -> bytes:
    """The header section of `message` with the empty line that ends it (RFC 5322 §2.1), so
    that looking at fields never splits the body into lines."""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 4]


async def verify_dkim(
    message: bytes,
    resolver: Resolver,
    *,
    max_signatures: int = MAX_SIGNATURES,
    min_rsa_bits: int = 1024,
    accept_rsa_sha1: bool = False,
    offload: Offload = in_thread,
    body_hashes: Mapping[int, bytes] | None = None,
    fields: Sequence[HeaderField] | None = None,
) -> tuple[DkimResult, ...]:
    """Every DKIM-Signature of `message` (headers and body), top first; () when unsigned.
    Only the first `max_signatures` are verified, so one message asks at most that many DNS
    questions; dkimpy's work runs in `offload`, never on the event loop.
    With `body_hashes` (signature index -> body hash, from `bodyhash.SignatureBodies`),
    `message` is the header section only: the body was hashed as it streamed past.
    `accept_rsa_sha1` breaks RFC 8301 §3.1 on purpose (for interop tests with old signers).
    `fields`: the header section already split (`split_header_fields`), when the caller has it."""
    if fields is None:
        fields = split_header_fields(header_block(message))
    signatures = [f for f in fields if f.name.lower() == b"dkim-signature"][:max_signatures]
    tags: list[dict[bytes, bytes] | None] = [_parse_tags(f.value) for f in signatures]
    names = [key_name(_text(t, b"s"), _text(t, b"d")) for t in tags if t and _has_key_tags(t)]
    if not tags:
        return ()
    answers = await fetch_keys(resolver, names)
    work = functools.partial(
        _verify_all, message, tags, answers, min_rsa_bits, accept_rsa_sha1, body_hashes
    )
    return await offload(work)


def _verify_all(
    message: bytes,
    tags: list[dict[bytes, bytes] | None],
    answers: Mapping[str, DnsAnswer],
    min_rsa_bits: int,
    accept_rsa_sha1: bool,
    body_hashes: Mapping[int, bytes] | None,
) -> tuple[DkimResult, ...]:
    """dkimpy's part (canonicalizing and hashing the body once per signature): CPU only."""
    dnsfunc = answer_dnsfunc(answers)
    try:
        if body_hashes is None:
            checker = FastDKIM(message, minkey=min_rsa_bits)
        else:
            checker = HashedBodyDKIM(message, body_hashes, min_rsa_bits)
    except DKIMPY_ERRORS as error:
        checker = None
        broken = f"message not parseable: {error}"
    results: list[DkimResult] = []
    for index, sig in enumerate(tags):
        if checker is None:
            results.append(DkimResult(DkimStatus.NEUTRAL, reason=broken))
        else:
            results.append(_verify_one(checker, index, sig, answers, dnsfunc, accept_rsa_sha1))
    return tuple(results)


def _verify_one(
    checker: object,
    index: int,
    sig: dict[bytes, bytes] | None,
    answers: Mapping[str, DnsAnswer],
    dnsfunc: DnsFunc,
    accept_rsa_sha1: bool,
) -> DkimResult:
    if sig is None or not _has_key_tags(sig):
        # RFC 8601 §2.7.1: a signature with syntax errors is "neutral".
        return DkimResult(DkimStatus.NEUTRAL, reason="signature syntax error")
    domain, selector, algorithm = _text(sig, b"d"), _text(sig, b"s"), _text(sig, b"a")
    base = DkimResult(
        DkimStatus.PASS,
        domain=domain,
        selector=selector,
        algorithm=algorithm,
        identity=_text(sig, b"i") or "@" + domain,
        signature_prefix=re.sub(r"\s+", "", _text(sig, b"b"))[:8],
    )
    if algorithm == "rsa-sha1" and not accept_rsa_sha1:
        # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid.
        return _with(base, DkimStatus.PERMERROR, "rsa-sha1 is not accepted")
    answer = answers[key_name(selector, domain)]
    if answer.status is DnsStatus.TEMPFAIL:
        # RFC 6376 §6.1.2 step 3: the key query failed to respond: TEMPFAIL.
        return _with(base, DkimStatus.TEMPERROR, "key lookup failed: " + answer.detail)
    if not answer.texts():
        # RFC 6376 §6.1.2 step 3: no key record: PERMFAIL (no key for signature).
        return _with(base, DkimStatus.PERMERROR, "no key record")
    key_problem = _key_problem(answer.texts()[0], algorithm)
    if key_problem:
        return _with(base, DkimStatus.PERMERROR, key_problem)
    try:
        valid = bool(checker.verify(index, dnsfunc=dnsfunc))  # type: ignore[attr-defined]
    except dkim.ValidationError as error:
        if "body hash mismatch" in str(error):
            # RFC 6376 §6.1.3: a body hash that does not match is PERMFAIL: "fail".
            return _with(base, DkimStatus.FAIL, "body hash did not verify")
        return _with(base, DkimStatus.NEUTRAL, str(error))
    except dkim.KeyFormatError as error:
        return _with(base, DkimStatus.PERMERROR, str(error))
    except dkim.DKIMException as error:
        return _with(base, DkimStatus.NEUTRAL, str(error))
    except DKIMPY_ERRORS as error:
        # RFC 8601 §2.7.1: a signature that cannot be processed is a permerror.
        return _with(base, DkimStatus.PERMERROR, f"cannot parse: {type(error).__name__}")
    if not valid:
        return _with(base, DkimStatus.FAIL, "signature did not verify")
    return base


# By record text and algorithm: the same few keys sign most of the mail (fastverify.py).
@functools.lru_cache(maxsize=1024)
def _key_problem(record: bytes, algorithm: str) -> str:
    tags = _parse_tags(record)
    if tags is not None and not tags.get(b"p", b"").strip():
        # RFC 6376 §3.6.1: an empty p= means the key was revoked.
        return "key revoked"
    try:
        key = parsed_key(record)
    except DKIMPY_ERRORS as error:
        return f"bad key: {error}"
    ktag = key.ktag
    if ktag == b"rsa" and key.rsa_key is None:
        # RFC 6376 §6.1.2 step 6: a key that cannot be used (e >= n, an even e) is a
        # PERMFAIL; checking it with dkimpy's Python arithmetic cost seconds (fastverify.py).
        return "bad key: RSA key not usable"
    # RFC 6376 §6.1.2 step 6: the key type must match the signature algorithm.
    if not algorithm.startswith(bytes(ktag).decode("ascii") + "-"):
        return "key type does not match the signature algorithm"
    return ""


def _with(base: DkimResult, status: DkimStatus, reason: str) -> DkimResult:
    return DkimResult(
        status,
        base.domain,
        base.selector,
        reason,
        base.algorithm,
        base.identity,
        base.signature_prefix,
    )


def _parse_tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return dict(parse_tag_value(value))
    except (InvalidTagValueList, ValueError):
        return None


def _has_key_tags(tags: Mapping[bytes, bytes]) -> bool:
    return all(tags.get(t) for t in (b"d", b"s", b"a", b"b", b"bh", b"h"))


def _text(tags: Mapping[bytes, bytes] | None, key: bytes) -> str:
    if tags is None:
        return ""
    return tags.get(key, b"").decode("utf-8", "replace").strip()
