"""Encrypt a whole message to one user's public key: PGP/MIME (RFC 3156) or S/MIME (RFC 8551),
with header protection (RFC 9788).

The result is a complete RFC 5322 message. Its outer header keeps the trace fields and what a
mail client needs to list and thread it (From, To, Cc, Date, Message-ID, ...); the Subject reads
"..."; every original field travels inside the encrypted part. A message that is already
encrypted end to end comes back unchanged.

Messages are handled in memory, up to MAX_MESSAGE_SIZE (64 MiB, above the 50 MiB default of
[limits] max_message_size); a bigger one raises MessageTooLarge.

Must not import anything of hato but model.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import os
from typing import TYPE_CHECKING, assert_never

from cryptography import x509

from hato.crypto import cms
from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.mime import Field, Parsed, inner_part, is_encrypted, outer_fields, split_message

if TYPE_CHECKING:
    import pysequoia

MAX_MESSAGE_SIZE = 64 * 1024 * 1024


class EncryptionError(Exception):
    """The message cannot be encrypted to this key now (expired key, missing pysequoia)."""


class MessageTooLarge(EncryptionError):
    """The message is larger than MAX_MESSAGE_SIZE."""


def encrypt_message(message: bytes, key: PublicKey, *, now: dt.datetime | None = None) -> bytes:
    """`message` encrypted to `key`, or `message` itself when it is already encrypted."""
    if len(message) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(
            f"message of {len(message)} octets is above the {MAX_MESSAGE_SIZE}-octet limit"
        )
    parsed = split_message(message)
    if is_encrypted(parsed):
        return message
    if key.expired(now or dt.datetime.now(dt.UTC)):
        raise EncryptionError(f"the key {key.fingerprint} of {key.address} has expired")
    outer = outer_fields(parsed)
    inner = inner_part(parsed, outer)
    match key.kind:
        case KeyKind.OPENPGP:
            return _pgp_mime(parsed, outer, inner, key)
        case KeyKind.SMIME:
            return _smime(parsed, outer, inner, key)
        case _:
            assert_never(key.kind)


def _header(parsed: Parsed, outer: list[Field], mime: list[bytes]) -> bytes:
    eol = parsed.eol
    lines = [f.raw if f.raw.endswith(b"\n") else f.raw + eol for f in outer]
    # RFC 2045 §4: the outer message is MIME.
    lines.append(b"MIME-Version: 1.0" + eol)
    lines.extend(line + eol for line in mime)
    return b"".join(lines) + eol


def _eol(text: bytes, eol: bytes) -> bytes:
    lines = text.splitlines()
    return eol.join(lines) + eol


# -- PGP/MIME --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _pgp_cert(data: bytes) -> pysequoia.Cert:
    import pysequoia

    return pysequoia.Cert.from_bytes(data)


def _pgp_mime(parsed: Parsed, outer: list[Field], inner: bytes, key: PublicKey) -> bytes:
    try:
        import pysequoia
    except ImportError:
        raise EncryptionError(
            "OpenPGP needs pysequoia, a dependency of hato that is missing here: "
            "pip install 'pysequoia>=0.1.30' (in hato's environment)"
        ) from None
    try:
        armored = pysequoia.encrypt(inner, [_pgp_cert(key.data)], armor=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EncryptionError(f"OpenPGP encryption to {key.fingerprint} failed: {first}") from None
    eol = parsed.eol
    boundary = _boundary()
    # RFC 3156 §4: multipart/encrypted with protocol="application/pgp-encrypted"; the first
    # part is the version ("Version: 1"), the second the OpenPGP message.
    head = _header(
        parsed,
        outer,
        [
            b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
            b' boundary="' + boundary + b'"',
        ],
    )
    body = (
        b"This is an OpenPGP/MIME encrypted message (RFC 3156)." + eol + eol
        + b"--" + boundary + eol
        + b"Content-Type: application/pgp-encrypted" + eol
        + b"Content-Description: PGP/MIME version identification" + eol + eol
        + b"Version: 1" + eol + eol
        + b"--" + boundary + eol
        + b'Content-Type: application/octet-stream; name="encrypted.asc"' + eol
        + b"Content-Description: OpenPGP encrypted message" + eol
        + b'Content-Disposition: inline; filename="encrypted.asc"' + eol + eol
        + _eol(armored, eol) + eol
        + b"--" + boundary + b"--" + eol
    )  # fmt: skip
    return head + body


def _boundary() -> bytes:
    # RFC 2046 §5.1.1: must not occur in the body; base64 and armor never contain "=_".
    return b"=_hato_" + base64.b32encode(os.urandom(15)).lower()


# -- S/MIME ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _x509(data: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(data)


def _smime(parsed: Parsed, outer: list[Field], inner: bytes, key: PublicKey) -> bytes:
    der = cms.envelope(inner, _x509(key.data))
    eol = parsed.eol
    # RFC 8551 §3.2.2 / §3.3: application/pkcs7-mime; smime-type=enveloped-data, base64.
    head = _header(
        parsed,
        outer,
        [
            b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
            b"Content-Transfer-Encoding: base64",
            b'Content-Disposition: attachment; filename="smime.p7m"',
        ],
    )
    encoded = base64.encodebytes(der)  # RFC 2045 §6.8: lines of at most 76 characters
    return head + _eol(encoded, eol)
