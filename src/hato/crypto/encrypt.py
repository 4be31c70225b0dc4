"""Encrypt a whole message to one user's public key: PGP/MIME (RFC 3156) or S/MIME (RFC 8551),
with header protection (RFC 9788).

The result is a complete RFC 5322 message. Its outer header keeps the trace fields and what a
mail client needs to list and thread it (From, To, Cc, Date, Message-ID, ...); the Subject reads
"..."; every original field travels inside the encrypted part. A message that is already
encrypted end to end comes back unchanged.

Theory of operation: `encrypt_stream` reads the message from a `Source` (a callable giving its
chunks from the start, as often as needed) and hands the result to `out` chunk by chunk, so
memory is a chunk plus the header section (at most MAX_HEADER) whatever the message's size.
It reads the message three times: the header section, then the body to measure it (the
lengths of both formats come first) and to see how it ends (inline PGP, RFC 4880 §6.2), then
the body again to encrypt it. The OpenPGP message
is framed here (`pgpstream`), the CMS one in `cms.EnvelopeWriter`. An OpenPGP key of a kind
`pgpstream` does not write for is served by pysequoia in memory, up to SMALL_MESSAGE.
`encrypt_message` is the same on bytes, up to MAX_MESSAGE_SIZE (for Maildir re-encryption).

Must not import anything of hato but model.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, assert_never

from cryptography import x509

from hato.crypto import cms, pgpstream
from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.mime import (
    Field,
    Parsed,
    encrypted_type,
    inner_part,
    is_inline_pgp,
    outer_fields,
    split_message,
)
from hato.crypto.sealed import sealed_to

if TYPE_CHECKING:
    import pysequoia

MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # encrypt_message (bytes in memory) only
MAX_HEADER = 1024 * 1024  # the header section is parsed in memory
SMALL_MESSAGE = 1024 * 1024  # pysequoia in memory, for keys pgpstream cannot write for
CHUNK = 64 * 1024

Source = Callable[[], Iterator[bytes]]
Write = Callable[[bytes], None]


class EncryptionError(Exception):
    """The message cannot be encrypted to this key now (expired key, missing pysequoia)."""


class MessageTooLarge(EncryptionError):
    """The message (or its header section) is too large for the way it would be encrypted."""


def bytes_source(message: bytes) -> Source:
    def chunks() -> Iterator[bytes]:
        view = memoryview(message)
        for at in range(0, len(message), CHUNK):
            yield bytes(view[at : at + CHUNK])

    return chunks


def encrypt_message(message: bytes, key: PublicKey, *, now: dt.datetime | None = None) -> bytes:
    """`message` encrypted to `key`, or `message` itself when it is already encrypted."""
    if len(message) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(
            f"message of {len(message)} octets is above the {MAX_MESSAGE_SIZE}-octet limit"
        )
    out: list[bytes] = []
    if not encrypt_stream(bytes_source(message), key, out.append, now=now):
        return message
    return b"".join(out)


def encrypt_stream(
    source: Source, key: PublicKey, out: Write, *, now: dt.datetime | None = None
) -> bool:
    """Write the message encrypted to `key` to `out`; False (nothing written) when it is
    already encrypted end to end and is to be stored as it is."""
    parsed, header_size = _read_header(source)

    def body() -> Iterator[bytes]:
        crlf = _Crlf()
        for chunk in _skip(source(), header_size):
            yield crlf.feed(chunk)
        yield crlf.finish()

    size, tail = _measure(body())
    # Stored as it came only when the body is, all of it, one encrypted message to this key
    # (crypto/sealed.py): a label (multipart/encrypted, pkcs7-mime, an armor line) is not.
    if _already_encrypted(parsed, tail) and sealed_to(parsed, body(), key):
        return False
    if key.expired(now or dt.datetime.now(dt.UTC)):
        raise EncryptionError(f"the key {key.fingerprint} of {key.address} has expired")
    outer = outer_fields(parsed)
    header = inner_part(Parsed(parsed.fields, b"", parsed.eol), outer)

    def inner() -> Iterator[bytes]:
        yield header
        yield from body()

    match key.kind:
        case KeyKind.OPENPGP:
            _pgp_mime(parsed, outer, inner(), len(header) + size, key, out)
        case KeyKind.SMIME:
            _smime(parsed, outer, inner(), len(header) + size, key, out)
        case _:
            assert_never(key.kind)
    return True


def stored_as_it_came(source: Source, key: PublicKey) -> bool:
    """Whether `encrypt_stream` would store the message as it came: its body is one encrypted
    message to `key` (crypto/sealed.py), not only labelled so."""
    parsed, header_size = _read_header(source)

    def body() -> Iterator[bytes]:
        return _skip(source(), header_size)

    _, tail = _measure(body())
    return _already_encrypted(parsed, tail) and sealed_to(parsed, body(), key)


def _read_header(source: Source) -> tuple[Parsed, int]:
    """The header section parsed (its `body`: the first octets of the body) and its size."""
    buf = bytearray()
    for chunk in source():
        buf += chunk
        end = _header_end(buf)
        # A little of the body too: its start tells an inline-PGP message.
        if (end >= 0 and len(buf) >= end + 4096) or len(buf) > MAX_HEADER:
            break
    parsed = split_message(bytes(buf))
    header_size = len(buf) - len(parsed.body)
    if header_size > MAX_HEADER:
        raise MessageTooLarge(f"header section over {MAX_HEADER} octets")
    return parsed, header_size


def _header_end(buf: bytearray) -> int:
    # RFC 5322 §2.1: an empty line ends the header section (CRLF, or LF in files we rewrite).
    found = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
    return min(found) if found else -1


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0


def _measure(chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """(size, the last 4 KiB) of what `chunks` give."""
    size, tail = 0, b""
    for chunk in chunks:
        size += len(chunk)
        tail = (tail + chunk[-4096:])[-4096:]
    return size, tail


def _already_encrypted(parsed: Parsed, tail: bytes) -> bool:
    decided = encrypted_type(parsed)
    # RFC 4880 §6.2 inline PGP (text/*): the body starts and ends as one armored message.
    return decided if decided is not None else is_inline_pgp(parsed.body, tail)


class _Crlf:
    """RFC 3156 §3 / RFC 8551 §3.1.1: what is encrypted is canonical MIME, CRLF line ends;
    a CR at the end of a chunk waits for the next one."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        data = self._held + data
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        if b"\n" not in data:
            return data
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _header(parsed: Parsed, outer: list[Field], mime: list[bytes]) -> bytes:
    eol = parsed.eol
    lines = [f.raw if f.raw.endswith(b"\n") else f.raw + eol for f in outer]
    # RFC 2045 §4: the outer message is MIME.
    lines.append(b"MIME-Version: 1.0" + eol)
    lines.extend(line + eol for line in mime)
    return b"".join(lines) + eol


def _boundary() -> bytes:
    # RFC 2046 §5.1.1: must not occur in the body; base64 and armor never contain "=_".
    return b"=_hato_" + base64.b32encode(os.urandom(15)).lower()


# -- PGP/MIME --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _pgp_cert(data: bytes) -> pysequoia.Cert:
    import pysequoia

    return pysequoia.Cert.from_bytes(data)


def _pgp_mime(
    parsed: Parsed,
    outer: list[Field],
    inner: Iterator[bytes],
    size: int,
    key: PublicKey,
    out: Write,
) -> None:
    try:
        recipients: tuple[pgpstream.Recipient, ...] | None = pgpstream.recipients_of(key.data)
    except ImportError:
        raise EncryptionError("OpenPGP needs pysequoia: pip install pysequoia") from None
    except pgpstream.Unstreamable:
        recipients = None
    except (RuntimeError, ValueError) as exc:
        raise _pgp_failed(key, exc) from None
    small = None if recipients is not None else _small(inner, key)
    eol = parsed.eol
    boundary = _boundary()
    # RFC 3156 §4: multipart/encrypted with protocol="application/pgp-encrypted"; the first
    # part is the version ("Version: 1"), the second the OpenPGP message.
    out(
        _header(
            parsed,
            outer,
            [
                b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
                b' boundary="' + boundary + b'"',
            ],
        )
    )
    out(
        b"This is an OpenPGP/MIME encrypted message (RFC 3156)." + eol + eol
        + b"--" + boundary + eol
        + b"Content-Type: application/pgp-encrypted" + eol
        + b"Content-Description: PGP/MIME version identification" + eol + eol
        + b"Version: 1" + eol + eol
        + b"--" + boundary + eol
        + b'Content-Type: application/octet-stream; name="encrypted.asc"' + eol
        + b"Content-Description: OpenPGP encrypted message" + eol
        + b'Content-Disposition: inline; filename="encrypted.asc"' + eol + eol
    )  # fmt: skip
    armor = pgpstream.Armor(out, eol)
    if recipients is not None:
        encryptor = pgpstream.Encryptor(recipients, armor.write, size)
        for chunk in inner:
            encryptor.write(chunk)
        encryptor.close()
    else:
        assert small is not None
        armor.write(small)
    armor.close()
    out(eol + b"--" + boundary + b"--" + eol)


def _small(inner: Iterator[bytes], key: PublicKey) -> bytes:
    """The OpenPGP message by pysequoia, in memory: only for a small message."""
    import pysequoia

    data = bytearray()
    for chunk in inner:
        data += chunk
        if len(data) > SMALL_MESSAGE:
            raise MessageTooLarge(
                f"the key {key.fingerprint} ({key.algorithm}) takes messages up to "
                f"{SMALL_MESSAGE} octets"
            )
    try:
        return bytes(pysequoia.encrypt(bytes(data), [_pgp_cert(key.data)], armor=False))
    except (RuntimeError, ValueError) as exc:
        raise _pgp_failed(key, exc) from None


def _pgp_failed(key: PublicKey, exc: Exception) -> EncryptionError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return EncryptionError(f"OpenPGP encryption to {key.fingerprint} failed: {first}")


# -- S/MIME ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _x509(data: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(data)


def _smime(
    parsed: Parsed,
    outer: list[Field],
    inner: Iterator[bytes],
    size: int,
    key: PublicKey,
    out: Write,
) -> None:
    eol = parsed.eol
    # RFC 8551 §3.2.2 / §3.3: application/pkcs7-mime; smime-type=enveloped-data, base64.
    out(
        _header(
            parsed,
            outer,
            [
                b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;",
                b' name="smime.p7m"',
                b"Content-Transfer-Encoding: base64",
                b'Content-Disposition: attachment; filename="smime.p7m"',
            ],
        )
    )
    lines = pgpstream.Base64Lines(out, eol)
    envelope = cms.EnvelopeWriter(_x509(key.data), lines.write, size)
    for chunk in inner:
        envelope.write(chunk)
    envelope.close()
    lines.close()
