"""DKIM signing (RFC 6376, RFC 8463) on `cryptography`: canonicalization, keys, the signer.

Signing never holds the body: `RelaxedBodyHasher` canonicalizes chunk by chunk (a partial last
line and a count of pending empty lines are all it keeps), and the header block is small.
`DkimSigner.sign` returns the ``DKIM-Signature`` field to put in the stored prefix. The header
canonicalization and tag folding here are shared with ARC (arc.py).

Imports: model, cryptography. No I/O of its own.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from hato.authcheck.canon import relaxed_lines
from hato.model.dns import normalize_name
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

_WSP_RUN = re.compile(rb"[ \t]+")
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
        self._hash_lines(relaxed_lines(data[:cut]))

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

    def sign(
        self,
        header_block: bytes,
        body_chunks: Iterable[bytes],
        fields: Sequence[HeaderField] | None = None,
    ) -> bytes:
        """The ``DKIM-Signature: ...\\r\\n`` field to prepend to the message; `fields`:
        `header_block` already split by `split_header_fields`, when the caller has it."""
        hasher = RelaxedBodyHasher()
        for chunk in body_chunks:
            hasher.update(chunk)
        if fields is None:
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
