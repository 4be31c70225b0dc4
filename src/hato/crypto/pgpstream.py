"""Streaming OpenPGP encryption (RFC 4880, as kept by RFC 9580 for version 4 keys).

pysequoia encrypts whole byte strings (or named files) and holds the GIL while it does: a
40 MB message would sit in memory several times over and stall the event loop for a quarter
of a second. So the message framing is written here, chunk by chunk, on `cryptography`:

    PKESK v3 per recipient key  (RFC 4880 §5.1: the session key, encrypted to that key)
    SEIPD v1                    (RFC 4880 §5.13: AES-256 in OpenPGP CFB, with an MDC)
      Literal Data              (RFC 4880 §5.9, binary)
      MDC                       (RFC 4880 §5.14: SHA-1 of everything before it)

The plaintext's size is given in advance (the caller measures it in a first pass), so both
data packets have definite lengths; memory is one chunk. The output is ASCII-armored
(RFC 4880 §6.2).

Which keys to encrypt to is Sequoia's decision, so the standard policy, expiry, revocation
and key flags are honoured exactly as at import: `recipients_of` asks pysequoia to encrypt an
empty message, reads the key IDs of its PKESK packets, and takes those keys' material from
the certificate. Supported: RSA (RFC 4880 §5.1) and ECDH on Curve25519, P-256, P-384 and
P-521 (RFC 6637). Anything else (version 6 keys, X25519/X448 as in RFC 9580, post-quantum)
raises `Unstreamable`; the caller then encrypts small messages with pysequoia in memory.

Must not import anything of hato but model.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

Write = Callable[[bytes], None]

# RFC 4880 §4.3 packet tags.
_TAG_PKESK = 1
_TAG_PUBLIC_KEY = 6
_TAG_LITERAL = 11
_TAG_PUBLIC_SUBKEY = 14
_TAG_SEIPD = 18
_TAG_MDC = 19
# RFC 4880 §9.1 public-key algorithms, §9.2 symmetric, §9.4 hashes.
_RSA = (1, 2)  # RSA (Encrypt or Sign), RSA Encrypt-Only
_ECDH = 18  # RFC 6637 §5
_AES256 = 9
_KEK_SIZES = {7: 16, 8: 24, 9: 32}  # AES-128/192/256 key wrap (RFC 6637 §9)
_HASHES = {8: hashlib.sha256, 9: hashlib.sha384, 10: hashlib.sha512}
# RFC 6637 §11 and RFC 9580 §9.2: curve OIDs as written in the key packet.
_CV25519 = bytes.fromhex("2b060104019755010501")
_NIST = {
    bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("2b81040022"): ec.SECP384R1(),
    bytes.fromhex("2b81040023"): ec.SECP521R1(),
}

ARMOR_LINE = 57  # input octets per 76-character line of base64 (RFC 4880 §6.3: at most 76)


class Unstreamable(Exception):
    """The certificate's encryption keys are of a kind this module does not write for."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """One encryption key of a certificate: what a PKESK for it needs."""

    key_id: bytes  # RFC 4880 §12.2: the low 64 bits of the v4 fingerprint
    fingerprint: bytes
    algorithm: int
    rsa: rsa.RSAPublicKey | None = None
    curve_oid: bytes = b""
    point: bytes = b""  # the ECDH public point as the key packet holds it
    kdf_hash: int = 0
    kek_algorithm: int = 0


# -- reading packets -------------------------------------------------------------------------


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each packet with a definite length (RFC 4880 §4.2); stops at the first
    packet with a partial or indeterminate length."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        first = data[at]
        if not first & 0x80:
            raise Unstreamable("not an OpenPGP packet")
        if first & 0x40:  # new format (RFC 4880 §4.2.2)
            tag, o1 = first & 0x3F, data[at + 1]
            if o1 < 192:
                size, at = o1, at + 2
            elif o1 < 224:
                size, at = ((o1 - 192) << 8) + data[at + 2] + 192, at + 3
            elif o1 == 255:
                size, at = int.from_bytes(data[at + 2 : at + 6], "big"), at + 6
            else:
                break  # a partial length: a data packet, after the ones we want
        else:  # old format (RFC 4880 §4.2.1)
            tag, kind = (first >> 2) & 0x0F, first & 0x03
            if kind == 3:
                break
            width = 1 << kind
            size = int.from_bytes(data[at + 1 : at + 1 + width], "big")
            at += 1 + width
        out.append((tag, data[at : at + size]))
        at += size
    return out


def _mpi(data: bytes, at: int) -> tuple[bytes, int]:
    bits = int.from_bytes(data[at : at + 2], "big")
    end = at + 2 + (bits + 7) // 8
    return data[at + 2 : end], end


def _recipient(body: bytes) -> Recipient:
    if body[0] != 4:
        raise Unstreamable(f"version {body[0]} key")
    # RFC 4880 §12.2: the v4 fingerprint hashes 0x99, a two-octet length and the body.
    fingerprint = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()
    algorithm = body[5]
    if algorithm in _RSA:
        n, at = _mpi(body, 6)
        e, _ = _mpi(body, at)
        key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big"))
        return Recipient(fingerprint[-8:], fingerprint, algorithm, rsa=key.public_key())
    if algorithm == _ECDH:
        size = body[6]
        oid = body[7 : 7 + size]
        point, at = _mpi(body, 7 + size)
        # RFC 6637 §9: KDF parameters: size (3), reserved (1), hash, key-wrap algorithm.
        kdf_hash, kek = body[at + 2], body[at + 3]
        if (oid != _CV25519 and oid not in _NIST) or kdf_hash not in _HASHES:
            raise Unstreamable("ECDH on an unsupported curve or hash")
        if kek not in _KEK_SIZES:
            raise Unstreamable("ECDH with an unsupported key wrap")
        return Recipient(fingerprint[-8:], fingerprint, algorithm, None, oid, point, kdf_hash, kek)
    raise Unstreamable(f"public-key algorithm {algorithm}")


@functools.lru_cache(maxsize=256)
def recipients_of(cert: bytes) -> tuple[Recipient, ...]:
    """The keys Sequoia would encrypt to for this certificate (see the module docstring)."""
    import pysequoia

    probe = pysequoia.encrypt(b"", [pysequoia.Cert.from_bytes(cert)], armor=False)
    wanted: list[bytes] = []
    for tag, body in _packets(probe):
        if tag != _TAG_PKESK:
            break
        if body[0] == 3:
            wanted.append(body[1:9])  # RFC 4880 §5.1: the key ID
        elif body[0] == 6 and body[1] == 21 and body[2] == 4:
            # RFC 9580 §5.1.2: Sequoia chose a v6 PKESK (for SEIPD v2) to a v4 key: its
            # fingerprint names it. SEIPD v1 is still for every implementation (§5.13.1).
            wanted.append(body[3:23][-8:])
        else:
            raise Unstreamable(f"version {body[0]} PKESK to a key of another version")
    keys = {}
    for tag, body in _packets(cert):
        if tag in (_TAG_PUBLIC_KEY, _TAG_PUBLIC_SUBKEY) and body[:1] == b"\x04":
            fingerprint = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()
            if fingerprint[-8:] in wanted:
                keys[fingerprint[-8:]] = body
    if not wanted or set(wanted) != set(keys):
        raise Unstreamable("encryption key not found in the certificate")
    return tuple(_recipient(keys[k]) for k in wanted)


def key_ids(cert: bytes) -> frozenset[bytes]:
    """The key IDs (RFC 4880 §12.2) of a certificate's v4 primary key and subkeys: what a
    PKESK to one of them names (crypto/sealed.py)."""
    ids = set()
    for tag, body in _packets(cert):
        if tag in (_TAG_PUBLIC_KEY, _TAG_PUBLIC_SUBKEY) and body[:1] == b"\x04":
            ids.add(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()[-8:])
    return frozenset(ids)


# -- writing packets -------------------------------------------------------------------------


def _length(size: int) -> bytes:
    """RFC 4880 §4.2.2: a new-format definite length."""
    if size < 192:
        return bytes((size,))
    if size < 8384:
        size -= 192
        return bytes(((size >> 8) + 192, size & 0xFF))
    return b"\xff" + size.to_bytes(4, "big")


def _packet(tag: int, body: bytes) -> bytes:
    return bytes((0xC0 | tag,)) + _length(len(body)) + body


def _to_mpi(value: bytes) -> bytes:
    value = value.lstrip(b"\x00")
    bits = (len(value) - 1) * 8 + value[0].bit_length() if value else 0
    return bits.to_bytes(2, "big") + value


def _session_key_payload(session_key: bytes) -> bytes:
    # RFC 4880 §5.1: algorithm octet, the key, a two-octet sum of the key's octets mod 65536.
    checksum = (sum(session_key) & 0xFFFF).to_bytes(2, "big")
    return bytes((_AES256,)) + session_key + checksum


def _pkesk(recipient: Recipient, session_key: bytes) -> bytes:
    payload = _session_key_payload(session_key)
    if recipient.rsa is not None:
        # RFC 4880 §5.1: RSA: m^e mod n, m being the EME-PKCS1-v1_5 encoding of the payload.
        fields = _to_mpi(recipient.rsa.encrypt(payload, padding.PKCS1v15()))
    else:
        fields = _ecdh_fields(recipient, payload)
    body = b"\x03" + recipient.key_id + bytes((recipient.algorithm,)) + fields
    return _packet(_TAG_PKESK, body)


def _ecdh_fields(recipient: Recipient, payload: bytes) -> bytes:
    """RFC 6637 §8: an ephemeral key, the KDF of §7, and the payload wrapped (RFC 3394)."""
    if recipient.curve_oid == _CV25519:
        # RFC 9580 §11.5 (Curve25519Legacy): the point is 0x40 and the native 32 octets.
        ephemeral = x25519.X25519PrivateKey.generate()
        peer = x25519.X25519PublicKey.from_public_bytes(recipient.point[1:])
        shared = ephemeral.exchange(peer)
        mine = b"\x40" + ephemeral.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        curve = _NIST[recipient.curve_oid]
        peer_ec = ec.EllipticCurvePublicKey.from_encoded_point(curve, recipient.point)
        ephemeral_ec = ec.generate_private_key(curve)
        shared = ephemeral_ec.exchange(ec.ECDH(), peer_ec)  # the x coordinate (RFC 6637 §8)
        mine = ephemeral_ec.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    # RFC 6637 §8: curve OID, algorithm, KDF parameters, "Anonymous Sender    ", fingerprint.
    param = (
        bytes((len(recipient.curve_oid),))
        + recipient.curve_oid
        + bytes((_ECDH, 3, 1, recipient.kdf_hash, recipient.kek_algorithm))
        + b"Anonymous Sender    "
        + recipient.fingerprint
    )
    # RFC 6637 §7: one round of the hash over 00 00 00 01 || Z || Param, cut to the KEK size.
    kek = _HASHES[recipient.kdf_hash](b"\x00\x00\x00\x01" + shared + param).digest()
    kek = kek[: _KEK_SIZES[recipient.kek_algorithm]]
    # RFC 6637 §8: PKCS#5 padding to a multiple of 8 octets before the key wrap.
    pad = 8 - len(payload) % 8
    wrapped = aes_key_wrap(kek, payload + bytes((pad,)) * pad)
    return _to_mpi(mine) + bytes((len(wrapped),)) + wrapped


class Base64Lines:
    """RFC 2045 §6.8 base64 in lines of 76 characters ending in `eol`, written as octets come
    (RFC 4880 §6.3 allows armor lines of up to 76 characters too)."""

    def __init__(self, out: Write, eol: bytes) -> None:
        self._out = out
        self._eol = eol
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        whole = len(self._buf) - len(self._buf) % ARMOR_LINE
        if whole:
            self._out(self._lines(bytes(self._buf[:whole])))
            del self._buf[:whole]

    def close(self) -> None:
        if self._buf:
            self._out(self._lines(bytes(self._buf)))
        self._buf.clear()

    def _lines(self, data: bytes) -> bytes:
        encoded = base64.encodebytes(data)  # 76 characters and "\n" per line
        return encoded if self._eol == b"\n" else encoded.replace(b"\n", self._eol)


class Armor:
    """RFC 4880 §6.2 ASCII armor of a binary stream, lines ending in `eol`. No CRC-24 line:
    RFC 9580 §6.1 says not to write one (and it was optional in RFC 4880 §6)."""

    def __init__(self, out: Write, eol: bytes, kind: bytes = b"MESSAGE") -> None:
        self._out = out
        self._end = b"-----END PGP " + kind + b"-----" + eol
        self._lines = Base64Lines(out, eol)
        out(b"-----BEGIN PGP " + kind + b"-----" + eol + eol)

    def write(self, data: bytes) -> None:
        self._lines.write(data)

    def close(self) -> None:
        self._lines.close()
        self._out(self._end)


class Encryptor:
    """`write()` the `size` octets of plaintext, then `close()`: the OpenPGP message goes to
    `out` (binary; wrap `out` in `Armor` for text)."""

    def __init__(self, recipients: tuple[Recipient, ...], out: Write, size: int) -> None:
        session_key = os.urandom(32)
        pkesks = b"".join(_pkesk(r, session_key) for r in recipients)
        # RFC 4880 §5.9: binary; the file name only makes the length right (below); no date.
        name = b""
        for name in (b"", b"m", b"ms"):
            literal = bytes((ord("b"), len(name))) + name + bytes(4)
            literal_size = len(literal) + size
            # SEIPD body: version, 18 octets of prefix, the literal packet, the MDC packet.
            seipd_size = 1 + 18 + 1 + len(_length(literal_size)) + literal_size + 22
            total = len(pkesks) + 1 + len(_length(seipd_size)) + seipd_size
            # GnuPG 2.2 finds the end of armor without a CRC-24 line only at base64's "="
            # padding: the binary length must not be a multiple of 3.
            if total % 3:
                break
        self._left = size
        out(pkesks + bytes((0xC0 | _TAG_SEIPD,)) + _length(seipd_size) + b"\x01")
        self._out = out
        # RFC 4880 §13.9 / §5.13: plain CFB with a zero IV over a random block whose last two
        # octets repeat (no resynchronization in a SEIPD packet).
        self._cfb = Cipher(algorithms.AES(session_key), CFB(bytes(16))).encryptor()
        self._mdc = hashlib.sha1()
        prefix = os.urandom(16)
        self._plain(
            prefix + prefix[-2:] + bytes((0xC0 | _TAG_LITERAL,)) + _length(literal_size) + literal
        )

    def _plain(self, data: bytes) -> None:
        self._mdc.update(data)
        self._out(self._cfb.update(data))

    def write(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            raise ValueError("more plaintext than announced")
        self._plain(data)

    def close(self) -> None:
        if self._left:
            raise ValueError("less plaintext than announced")
        # RFC 4880 §5.14: the MDC packet (tag 19, length 20) is hashed up to its length octet.
        self._mdc.update(b"\xd3\x14")
        mdc = b"\xd3\x14" + self._mdc.digest()
        self._out(self._cfb.update(mdc) + self._cfb.finalize())
