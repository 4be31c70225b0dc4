"""DKIM: signing our mail (RFC 6376, RFC 8463) on `cryptography`, verifying theirs with dkimpy.

Theory of operation. Signing never holds the body: `RelaxedBodyHasher` canonicalizes chunk by
chunk (a partial last line and a count of pending empty lines are all it keeps), and the header
block is small. `DkimSigner.sign` returns the ``DKIM-Signature`` field to put in the stored
prefix. Verification hands the whole message to dkimpy, but never lets dkimpy touch DNS: the
selector records of every signature (at most MAX_SIGNATURES) are fetched first through the
async `Resolver` seam, and dkimpy's `dnsfunc` hook answers from that dict. DNS outcomes that
decide a result on their own (no key, temporary failure) are settled before dkimpy runs, and
dkimpy itself runs in an `Offload` (a worker thread), never on the event loop.

Imports: model (DNS seam, Clock), cryptography, dkimpy. No I/O of its own.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

from hato.authcheck.bodyhash import HashedBodyDKIM
from hato.authcheck.offload import Offload, in_thread
from hato.model.dns import DnsAnswer, DnsNameError, DnsStatus, RdType, Resolver, normalize_name
from hato.model.header import HeaderField, split_header_fields
from hato.model.seams import Clock

# RFC 6376 §5.4.1 recommends these; we sign only those present (plus From, always).
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type", "content-transfer-encoding",
    "content-id", "content-description", "resent-date", "resent-from", "resent-sender",
    "resent-to", "resent-cc", "resent-message-id", "list-id", "list-help", "list-unsubscribe",
    "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner", "list-archive",
    "autocrypt", "openpgp",
)  # fmt: skip
# RFC 6376 §8.15: signing a name once more than it occurs stops a second one being added.
DEFAULT_OVERSIGNED: tuple[str, ...] = (
    "from", "reply-to", "to", "cc", "subject", "date", "message-id", "content-type",
)  # fmt: skip

# A cap of ours: each signature costs a DNS question and a pass over the body (RFC 6376 §6.1
# lets a verifier limit the signatures it checks).
MAX_SIGNATURES = 8

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb" \r\n")
_FOLD_WIDTH = 76


class DkimError(ValueError):
    """A key or a signing request we cannot use; the message says which and why."""


class DkimAlgorithm(enum.Enum):
    RSA_SHA256 = "rsa-sha256"  # RFC 6376 §3.3.1 (rsa-sha1 is never used: RFC 8301 §3.1)
    ED25519_SHA256 = "ed25519-sha256"  # RFC 8463 §3


# --- header fields and canonicalization (RFC 6376 §3.4) ---------------------------------------


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfold, WSP runs to one SP, no WSP around the colon."""
    unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"")
    body = _WSP_RUN.sub(b" ", unfolded).strip(b" \t")
    return name.strip(b" \t").lower() + b":" + body + b"\r\n"


def pieces(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """`body` in slices for `RelaxedBodyHasher`: one regex pass over megabytes would hold the
    GIL for a second, so a thread hashing a big body lets the event loop run between slices."""
    view = memoryview(body)
    for at in range(0, len(body), size):
        yield bytes(view[at : at + size])


class RelaxedBodyHasher:
    """SHA-256 of a body under RFC 6376 §3.4.4 "relaxed", fed in chunks of any size."""

    __slots__ = ("_hash", "_partial", "_pending_empty")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._partial = b""  # bytes after the last CRLF seen: a line not yet complete
        self._pending_empty = 0  # empty lines seen but not hashed: they may be trailing ones

    def update(self, chunk: bytes) -> None:
        data = self._partial + chunk
        cut = data.rfind(b"\r\n") + 2
        if cut < 2:
            self._partial = data
            return
        self._partial = data[cut:]
        # RFC 6376 §3.4.4: WSP runs become one SP, WSP at the end of a line goes.
        lines = _WSP_EOL.sub(b"\r\n", _WSP_RUN.sub(b" ", data[:cut]))
        self._hash_lines(lines)

    def _hash_lines(self, lines: bytes) -> None:
        # RFC 6376 §3.4.4: empty lines at the end of the body are ignored; hold them back
        # until a non-empty line shows they were not the end. `lines` ends with a CRLF.
        size, crlfs = len(lines), 1
        while (
            size >= 2 * (crlfs + 1) and lines[size - 2 * (crlfs + 1) : size - 2 * crlfs] == b"\r\n"
        ):
            crlfs += 1
        if 2 * crlfs == size:
            self._pending_empty += crlfs
            return
        self._hash.update(b"\r\n" * self._pending_empty + lines[: size - 2 * (crlfs - 1)])
        self._pending_empty = crlfs - 1

    def digest(self) -> bytes:
        last = _WSP_RUN.sub(b" ", self._partial).rstrip(b" \t")
        if last:
            # RFC 6376 §3.4.4: a non-empty body gets a final CRLF if it lacks one.
            self._hash.update(b"\r\n" * self._pending_empty + last + b"\r\n")
            self._pending_empty = 0
        self._partial = b""
        return self._hash.digest()


# --- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key for DKIM or ARC, and the algorithm it signs with."""

    algorithm: DkimAlgorithm
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, signed_data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over SHA-256 of the data.
            return self.key.sign(signed_data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463 §3: Ed25519 (PureEdDSA) signs the SHA-256 hash, not the data itself.
        return self.key.sign(hashlib.sha256(signed_data).digest())

    def dns_txt(self) -> str:
        """The selector record to publish (RFC 6376 §3.6.1; RFC 8463 §4 for ed25519)."""
        public = self.key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def load_signing_key(data: bytes) -> SigningKey:
    """A key from PEM (PKCS#1 or PKCS#8, RSA or Ed25519) or a base64 raw Ed25519 seed."""
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise DkimError(f"cannot read the PEM private key: {error}") from error
    else:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
            key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as error:
            raise DkimError("not a PEM key nor a base64 32-byte Ed25519 seed") from error
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(DkimAlgorithm.ED25519_SHA256, key)
    if isinstance(key, rsa.RSAPrivateKey):
        # RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits.
        if key.key_size < 1024:
            raise DkimError(f"RSA key of {key.key_size} bits; DKIM needs at least 1024")
        return SigningKey(DkimAlgorithm.RSA_SHA256, key)
    raise DkimError(f"unsupported key type {type(key).__name__}: use RSA or Ed25519")


def generate_key(algorithm: DkimAlgorithm, rsa_bits: int = 2048) -> tuple[bytes, str]:
    """A new key for ``hato dkim keygen``: (private key PEM, DNS TXT value to publish)."""
    if algorithm is DkimAlgorithm.ED25519_SHA256:
        key = SigningKey(algorithm, ed25519.Ed25519PrivateKey.generate())
    else:
        # RFC 8301 §3.2: 1024 bits at least, 2048 recommended.
        if rsa_bits < 1024:
            raise DkimError("RSA keys for DKIM need at least 1024 bits (2048 recommended)")
        key = SigningKey(algorithm, rsa.generate_private_key(65537, rsa_bits))
    return key.private_pem(), key.dns_txt()


# --- signing ------------------------------------------------------------------------------------


def header_hash_input(fields: Sequence[HeaderField], names: Sequence[str]) -> bytes:
    """RFC 6376 §5.4.2: for each name in h=, the last not-yet-used field of that name, from
    the bottom up; a name with no field left contributes nothing (that is how over-signing
    works). Relaxed canonicalization (§3.4.2)."""
    used: dict[bytes, int] = {}
    out: list[bytes] = []
    for name in names:
        key = name.lower().encode("ascii")
        matching = [f for f in fields if f.name.lower() == key]
        seen = used.get(key, 0)
        if seen < len(matching):
            field = matching[len(matching) - 1 - seen]
            out.append(relaxed_header(field.name, field.value))
        used[key] = seen + 1
    return b"".join(out)


def fold_tags(header_name: str, tags: Sequence[tuple[str, str]]) -> bytes:
    """``Name: k=v; k=v;`` folded at tag boundaries (and inside h= after a colon), with an
    empty ``b=`` on its own last line, ready for the signature to be appended."""
    lines: list[str] = []
    line = header_name + ":"
    for key, value in tags:
        pieces = [f"{key}={value};"]
        if key == "h":
            # RFC 6376 §3.5: FWS is allowed around the colons of h=.
            names = value.split(":")
            pieces = [f"h={names[0]}"] + [f":{n}" for n in names[1:]]
            pieces[-1] += ";"
        for i, piece in enumerate(pieces):
            sep = "" if i else " "
            if len(line) + len(sep) + len(piece) > _FOLD_WIDTH:
                lines.append(line)
                line = "\t" + piece
            else:
                line += sep + piece
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n\tb=").encode("ascii")


def fold_signature(signature: bytes) -> bytes:
    text = base64.b64encode(signature)
    return b"\r\n\t".join(text[i : i + 72] for i in range(0, len(text), 72)) + b"\r\n"


def domain_ascii(domain: str) -> str:
    """d= is the A-label form (RFC 6376 §3.5; RFC 8616 §4 for internationalized names)."""
    return normalize_name(domain).encode("idna").decode("ascii")


class DkimSigner:
    """Signs for one domain and selector: relaxed/relaxed (RFC 6376 §3.4), SHA-256."""

    def __init__(
        self,
        domain: str,
        selector: str,
        key: SigningKey,
        clock: Clock,
        *,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
        oversign: Sequence[str] = DEFAULT_OVERSIGNED,
        expire_after: int | None = None,
    ) -> None:
        self.domain = domain_ascii(domain)
        self.selector = selector.lower()
        self.key = key
        self._clock = clock
        self._headers = tuple(h.lower() for h in headers)
        self._oversign = frozenset(h.lower() for h in oversign)
        self._expire_after = expire_after

    def signed_names(self, fields: Sequence[HeaderField]) -> list[str]:
        """The h= list: each wanted name once per field present, plus over-signing."""
        present = [f.name.decode("ascii", "replace").lower() for f in fields]
        names: list[str] = []
        for name in self._headers:
            count = present.count(name)
            # RFC 6376 §5.4: the From header field MUST be signed.
            if name == "from":
                count = max(count, 1)
            names.extend([name] * count)
            if count and name in self._oversign:
                names.append(name)
        if "from" not in names:
            names.insert(0, "from")
        return names

    def sign(self, header_block: bytes, body_chunks: Iterable[bytes]) -> bytes:
        """The ``DKIM-Signature: ...\\r\\n`` field to prepend to the message."""
        hasher = RelaxedBodyHasher()
        for chunk in body_chunks:
            hasher.update(chunk)
        fields = split_header_fields(header_block)
        names = self.signed_names(fields)
        now = int(self._clock.now())
        tags = [
            ("v", "1"),
            ("a", self.key.algorithm.value),
            ("c", "relaxed/relaxed"),
            ("d", self.domain),
            ("s", self.selector),
            ("t", str(now)),
        ]
        if self._expire_after is not None:
            tags.append(("x", str(now + self._expire_after)))  # RFC 6376 §3.5 x=
        tags += [("h", ":".join(names)), ("bh", base64.b64encode(hasher.digest()).decode())]
        unsigned = fold_tags("DKIM-Signature", tags)
        name, value = unsigned.split(b":", 1)
        # RFC 6376 §3.7: the signature field itself, b= empty, last and without its CRLF.
        data = header_hash_input(fields, names) + relaxed_header(name, value)[:-2]
        return unsigned + fold_signature(self.key.sign(data))


# --- verification -------------------------------------------------------------------------------


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
) -> tuple[DkimResult, ...]:
    """Every DKIM-Signature of `message` (headers and body), top first; () when unsigned.
    Only the first `max_signatures` are verified, so one message asks at most that many DNS
    questions; dkimpy's work runs in `offload`, never on the event loop.
    With `body_hashes` (signature index -> body hash, from `bodyhash.SignatureBodies`),
    `message` is the header section only: the body was hashed as it streamed past.
    `accept_rsa_sha1` breaks RFC 8301 §3.1 on purpose (for interop tests with old signers)."""
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
            checker = dkim.DKIM(message, minkey=min_rsa_bits)
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


def _key_problem(record: bytes, algorithm: str) -> str:
    tags = _parse_tags(record)
    if tags is not None and not tags.get(b"p", b"").strip():
        # RFC 6376 §3.6.1: an empty p= means the key was revoked.
        return "key revoked"
    try:
        _, _, ktag, _ = dkim.evaluate_pk(b"key", record)
    except DKIMPY_ERRORS as error:
        return f"bad key: {error}"
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
