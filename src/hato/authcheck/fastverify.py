"""The cheap parts of DKIM and ARC verification: parsed keys kept, signatures checked in C.

dkimpy parses the key record (base64, ASN.1 in pure Python) for every signature it verifies,
and checks an RSA signature with pure-Python big integers (`pow` and a byte-by-byte integer to
string conversion): about 1 ms of CPU per signature on the benchmark machine, more than the
rest of a message's handling. `FastVerify` is a mixin for dkimpy's verifiers that
- takes the parsed key from `parsed_key`, a cache keyed by the key record's text itself (so it
  never needs a TTL: the DNS cache decides which record is current, RFC 6376 §3.6.2.1), and
- checks an RSA signature with `cryptography` (OpenSSL), RSASSA-PKCS1-v1_5 as RFC 6376 §3.3.1
  asks; an RSA key `cryptography` will not take (an exponent not below the modulus, an even
  one) verifies nothing: dkimpy's own check of it is Python's pow(), seconds per signature
  for a stranger's long key and exponent; Ed25519 (RFC 8463) is checked by PyNaCl as
  dkimpy checks it. An RSA key with a=ed25519-sha256 and an unknown a= stay dkimpy's.
- canonicalizes only the fields a signature covers (RFC 6376 §3.7, §5.4.2), each at most
  once per message and algorithm, and the body once per body algorithm: dkimpy
  canonicalizes every field of the header section, and the body, again for each signature.
Everything else (tags, canonicalization rules, which fields are signed) stays dkimpy's.

Imports: dkimpy, cryptography, PyNaCl's exceptions. No I/O of its own; runs in an Offload
like the rest of dkimpy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
    correct_empty_body,
    strip_trailing_lines,
)
from nacl.exceptions import BadSignatureError

# Distinct key records kept per process: a busy MX sees a few hundred signing keys a day.
KEY_CACHE_SIZE = 1024

_DIGESTS: dict[bytes, hashes.HashAlgorithm] = {
    b"rsa-sha256": hashes.SHA256(),
    b"rsa-sha1": hashes.SHA1(),  # still reachable with accept_rsa_sha1 (interop tests)
}


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """dkimpy's view of a key record (what `dkim.evaluate_pk` returns), and the RSA key as
    `cryptography` holds it (None for ed25519, or when `cryptography` refused it)."""

    pk: Any
    keysize: int
    ktag: bytes
    seqtlsrpt: bool
    rsa_key: rsa.RSAPublicKey | None


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def parsed_key(record: bytes) -> ParsedKey:
    """The parsed key of a key record (RFC 6376 §3.6.1); raises what `dkim.evaluate_pk`
    raises (KeyFormatError and friends) for a record it cannot use. Failures are not kept."""
    pk, keysize, ktag, seqtlsrpt = dkim.evaluate_pk(b"key", record)
    rsa_key = None
    if ktag == b"rsa":
        try:
            numbers = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"])
            rsa_key = numbers.public_key()
        except ValueError:
            rsa_key = None  # dkimpy's own arithmetic decides
    return ParsedKey(pk, keysize, ktag, seqtlsrpt, rsa_key)


_NAME = re.compile(rb"([\x21-\x7e]+?):")


def rfc822_headers(head: bytes) -> list[list[bytes]]:
    """dkimpy's `rfc822_parse` of a CRLF header section (what it makes of `head`, the same
    [name, value] lists and the same MessageFormatError), in time linear in it: dkimpy
    appends each continuation line to the value so far, copying it again per line, half a
    second of CPU for one 250 KiB field folded every 4 octets (RFC 5322 §2.2.3 sets no
    limit on a field's lines)."""
    headers: list[list[bytes]] = []
    parts: list[list[bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if not line:
            break  # the empty line that ends the header section
        if line[:1] in (b"\t", b" "):
            parts[-1].append(line + b"\r\n")  # IndexError first, as dkimpy's headers[-1]
            continue
        match = _NAME.match(line)
        if match is not None:
            headers.append([match.group(1), b""])
            parts.append([line[match.end(0) :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    for header, value in zip(headers, parts, strict=True):
        header[1] = b"".join(value)
    return headers


def rsa_valid(key: rsa.RSAPublicKey, signature: bytes, algorithm: bytes, digest: bytes) -> bool:
    """RFC 6376 §3.3.1 / RFC 8017 §8.2.2: RSASSA-PKCS1-v1_5 over the header hash."""
    size = (key.key_size + 7) // 8
    if len(signature) > size:
        return False
    # dkimpy reads the signature as an integer, so leading zero octets a signer left out
    # change nothing there: the same here.
    signature = signature.rjust(size, b"\0")
    try:
        key.verify(signature, digest, padding.PKCS1v15(), Prehashed(_DIGESTS[algorithm]))
    except InvalidSignature:
        return False
    except ValueError as error:  # as dkimpy: a modulus too small for the digest
        raise dkim.KeyFormatError(f"digest too large for modulus: {error}") from None
    return True


class FastVerify:
    """Mixin for `dkim.DKIM` and `dkim.ARC` (before them in the bases): cached keys, RSA in C.

    `verify_sig` and `verify_sig_process` follow dkimpy 1.1's of the same names step by step;
    only the key loading and the RSA arithmetic differ."""

    _rsa_key: rsa.RSAPublicKey | None = None

    def set_message(self, message: bytes | None) -> None:
        # dkimpy splits the whole message into lines and joins the body again, to turn bare
        # LFs into CRLFs: where there are none (SMTP's DATA brings CRLF lines, RFC 5321
        # §2.3.8) only the header section needs splitting, and the body is the same octets.
        end = message.find(b"\r\n\r\n") if message else -1
        if message and end >= 0 and _crlf_only(message):
            super().set_message(None)  # type: ignore[misc]
            self.headers = rfc822_headers(message[: end + 2])
            self.body = message[end + 4 :]
        else:
            super().set_message(message)  # type: ignore[misc]

    # dkimpy's attributes, for mypy
    pk: Any
    keysize: int
    ktag: bytes
    seqtlsrpt: bool
    minkey: int
    tlsrpt: Any
    body: bytes
    headers: list[Any]
    signed_headers: list[Any]

    def verify_sig(
        self,
        sig: dict[bytes, bytes],
        include_headers: list[bytes],
        sig_header: tuple[bytes, bytes],
        dnsfunc: Callable[..., bytes] | None,
    ) -> bool:
        if dnsfunc is None:  # dkimpy's own DNS: never used by Hato, left as dkimpy does it
            return bool(super().verify_sig(sig, include_headers, sig_header, dnsfunc))  # type: ignore[misc]
        # RFC 6376 §3.6.2.1: the key record at selector._domainkey.domain.
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        record = dnsfunc(name)
        try:
            key = parsed_key(record.encode("ascii") if isinstance(record, str) else record)
        except (dkim.KeyFormatError, binascii.Error):
            return False  # as dkimpy: a key it cannot use verifies nothing
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = (
            key.pk,
            key.keysize,
            key.ktag,
            key.seqtlsrpt,
        )
        self._rsa_key = key.rsa_key
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)

    def verify_sig_process(
        self,
        sig: dict[bytes, bytes],
        include_headers: list[bytes],
        sig_header: tuple[bytes, bytes],
        dnsfunc: Callable[..., bytes] | None,
    ) -> bool:
        if self.ktag == b"rsa" and self._rsa_key is None:
            # A key OpenSSL refuses (e >= n, an even e or n) verifies nothing. dkimpy would
            # check it with Python's pow(): a stranger's 16,384-bit modulus with an exponent
            # as long took 11 s of CPU per signature (RFC 6376 §6.1.2 step 6: an unusable
            # key is a PERMFAIL; RFC 8301 §3.2 only asks for 1024 to 4096-bit keys).
            return False
        algorithm = sig.get(b"a", b"")
        if algorithm not in dkim.HASH_ALGORITHMS or (
            self.ktag == b"rsa" and algorithm not in _DIGESTS
        ):
            # dkimpy's own errors for an unknown a=, its own check of an RSA key with
            # a=ed25519-sha256 (a DKIM signature only: ARC has rsa-sha256 alone).
            return bool(super().verify_sig_process(sig, include_headers, sig_header, dnsfunc))  # type: ignore[misc]
        # RFC 8460 §3: a TLS report's signature carries the tlsrpt service type, others not.
        if self.tlsrpt == "strict" and not self.seqtlsrpt:
            raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        try:
            canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as error:
            raise dkim.MessageFormatError(f"invalid c= value: {error.args[0]}") from None
        hasher = dkim.HASH_ALGORITHMS[algorithm]
        if b"bh" in sig:
            # RFC 6376 §3.7: the body hash, over the canonicalized body (l= octets of it).
            body = self._body_in(canon)
            if b"l" in sig and not self.tlsrpt:
                body = body[: int(sig[b"l"])]
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            if hasher(body).digest() != expected:
                raise dkim.ValidationError("body hash mismatch")
        # dkimpy's answer to its bug 644046: an extra From field is hashed too.
        if b"from" in include_headers:
            include_headers.append(b"from")
        header_hash = hasher()
        self.signed_headers = _hash_headers(
            header_hash, canon, self._signed_fields(canon, include_headers), sig_header
        )
        signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
        if self.ktag == b"ed25519":
            # RFC 8463 §3: Ed25519 over the SHA-256 header hash, as dkimpy checks it.
            try:
                self.pk.verify(header_hash.digest(), signature)
            except BadSignatureError:
                return False
            return True
        if self.ktag != b"rsa" or self._rsa_key is None:
            raise dkim.UnknownKeyTypeError(self.ktag)
        valid = rsa_valid(self._rsa_key, signature, algorithm, header_hash.digest())
        if valid and self.keysize < self.minkey:
            raise dkim.KeyFormatError(f"public key too small: {self.keysize}")
        return valid

    # What one message's verifications share: each field is canonicalized at most once per
    # algorithm, the body once per body algorithm, and the fields are indexed by name once.
    # A chain of 50 ARC sets has 100 signatures; canonicalizing every field of the header
    # section for each (dkimpy's way) was 9,000 fields and 18,000 regular expression passes
    # per message (~130 ms of CPU), for ~160 fields that are signed at all.
    _shared_for: list[Any] | None = None
    _by_name: dict[Any, dict[bytes, list[int]]]
    _canonical: dict[Any, dict[int, tuple[bytes, bytes]]]
    _bodies: dict[Any, bytes]

    def _shared(self) -> None:
        # Tied to the list itself: a new message (set_message) or a new list of fields
        # starts afresh; a list changed in place is not a verifier's (dkimpy changes none).
        if self._shared_for is not self.headers:
            self._shared_for = self.headers
            self._by_name, self._canonical, self._bodies = {}, {}, {}

    def _signed_fields(self, canon: Any, include_headers: list[bytes]) -> list[tuple[bytes, bytes]]:
        """RFC 6376 §5.4.2 (and RFC 8617 §5.1.1, §5.2 for ARC): for each name of h=, in its
        order, the bottom-most field of that name not yet taken, none once they are all
        taken; canonicalized (§3.4.1, §3.4.2) as dkimpy does, only these fields."""
        self._shared()
        algorithm = canon.header_algorithm
        by_name = self._by_name.get(algorithm)
        if by_name is None:
            # dkimpy compares h= with the canonicalized name lower-cased: the name as it
            # came for simple, lower-cased and stripped of WSP at its end for relaxed.
            names = (f[0].lower() for f in self.headers)
            relaxed = algorithm is Relaxed
            by_name = name_index(name.rstrip() for name in names) if relaxed else name_index(names)
            self._by_name[algorithm] = by_name
        done = self._canonical.setdefault(algorithm, {})
        signed = []
        for index in selected(by_name, include_headers):
            field = done.get(index)
            if field is None:
                field = done[index] = algorithm.canonicalize_headers([self.headers[index]])[0]
            signed.append(field)
        return signed

    def _body_in(self, canon: Any) -> bytes:
        """The body canonicalized by `canon`'s body algorithm, once per message."""
        self._shared()
        body = self._bodies.get(canon.body_algorithm)
        if body is None:
            body = self._bodies[canon.body_algorithm] = _canonical_body(canon, self.body)
        return body


def _hash_headers(
    hasher: Any,
    canon: Any,
    signed: list[tuple[bytes, bytes]],
    sig_header: tuple[bytes, bytes],
) -> list[tuple[bytes, bytes]]:
    """dkimpy's `hash_headers` for fields already selected and canonicalized, with its b=
    removal done by `without_b_value`."""
    # RFC 6376 §3.7: the signature field itself is hashed with its b= value deleted, and
    # without the CRLF that ends it.
    own = canon.canonicalize_headers([(sig_header[0], without_b_value(sig_header[1]))])
    hasher.update(
        b"".join(
            name + b":" + value for name, value in [*signed, *((n, v.rstrip()) for n, v in own)]
        )
    )
    return signed


def name_index(names: Iterable[bytes]) -> dict[bytes, list[int]]:
    """Where each name is in the header section, top to bottom."""
    by_name: dict[bytes, list[int]] = {}
    for index, name in enumerate(names):
        by_name.setdefault(name, []).append(index)
    return by_name


def selected(by_name: Mapping[bytes, list[int]], include_headers: list[bytes]) -> list[int]:
    """RFC 6376 §5.4.2 as dkimpy's `select_headers` does it, in one pass over h=: for every
    name of h=, the bottom-most field of that name not yet taken, none once they are all
    taken. dkimpy's looks for each name from the bottom of the header section again: a
    stranger's h= of 8,000 distinct names over as many fields cost 3.4 s of CPU."""
    taken: dict[bytes, int] = {}
    indices = []
    for name in include_headers:
        found = by_name.get(name, ())
        count = taken.get(name, 0)
        if count < len(found):
            taken[name] = count + 1
            indices.append(found[-1 - count])
    return indices


# What dkimpy's RE_BTAG matches, found without its nested quantifiers: `[;\s]b FWS =` (its
# FWS, `(?:(?:\s*\r?\n)?\s+)?`, matches exactly the runs of white space, empty included),
# then white space and base64 up to the last base64 character, then a line end that ends
# the value. dkimpy's pattern backtracks over every character of the signature (~0.4 ms of
# CPU for one RSA-2048 signature, the largest part of a verification); this is linear.
_B_TAG = re.compile(rb"[;\s]b\s*=")
_B_VALUE = re.compile(rb"[\sa-zA-Z0-9+/=]*")
_WHITE = b" \t\n\r\x0b\x0c"  # \s of a bytes pattern


def without_b_value(value: bytes) -> bytes:
    """`dkim.RE_BTAG.sub(b"\\1", value)`: every b= tag's value deleted, as dkimpy does it."""
    out: list[bytes] = []
    at = 0
    while (tag := _B_TAG.search(value, at)) is not None:
        start = tag.end()
        run = value[start : _B_VALUE.match(value, start).end()]  # type: ignore[union-attr]
        end = start + len(run.rstrip(_WHITE))
        if value[end:] in (b"\r\n", b"\n"):
            end = len(value)  # RE_BTAG's (?:\r?\n\Z)?
        out += [value[at : tag.start()], tag.group(0)]
        at = end
    out.append(value[at:])
    return b"".join(out)


def _crlf_only(data: bytes) -> bool:
    return data.count(b"\n") == data.count(b"\r\n")


def _canonical_body(canon: Any, body: bytes) -> bytes:
    # RFC 6376 §3.4.4: relaxed body canonicalization only changes runs of WSP and WSP at the
    # ends of lines; a body without a tab, two spaces in a row or a space before CRLF has
    # neither, so dkimpy's two regular expression passes over it would change nothing.
    if (
        canon.body_algorithm is Relaxed
        and b"\t" not in body
        and b"  " not in body
        and b" \r\n" not in body
    ):
        return _relaxed_ends(body)
    return bytes(canon.canonicalize_body(body))


def _relaxed_ends(body: bytes) -> bytes:
    # RFC 6376 §3.4.4 (c) and (d) and §3.4.3: empty lines at the end go; an empty body
    # stays empty, any other ends in one CRLF (dkimpy's strip_trailing_lines and
    # correct_empty_body).
    return bytes(correct_empty_body(strip_trailing_lines(body)))


class FastDKIM(FastVerify, dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM verifier with `FastVerify`."""
