"""CMS EnvelopedData for S/MIME (RFC 5652 §6) to one recipient certificate.

`envelope` gives DER in one piece (for small data). `EnvelopeWriter` streams the same DER:
given the plaintext's size, every length is known before the first octet of ciphertext, so
memory is one chunk whatever the size.

RSA recipients: key transport (RFC 5652 §6.2.1) with RSAES-PKCS1-v1_5 (RFC 8551 §2.3).
cryptography (up to 50) refuses EC recipients, so ECDH key agreement (RFC 5753 §3.1,
RFC 5652 §6.2.2) is built here from its primitives: an ephemeral key on the recipient's curve,
the ANSI X9.63 KDF with SHA-256, AES-256 key wrap (RFC 3394), content in AES-256-CBC.

Must not import anything of hato but model.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives.serialization import pkcs7

# Object identifiers, DER-encoded contents (tag and length added by _oid).
_ID_DATA = "1.2.840.113549.1.7.1"  # RFC 5652 §4
_ID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"  # RFC 5652 §6.1
_ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"  # RFC 5480 §2.1.1
_ID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"  # RFC 3370 §4.2.1
_ID_AES256_CBC = "2.16.840.1.101.3.4.1.42"  # RFC 3565 §4.1
_ID_AES256_WRAP = "2.16.840.1.101.3.4.1.45"  # RFC 3565 §4.3
# RFC 5753 §7.1.4 dhSinglePass-stdDH-sha256kdf-scheme (SEC 1: 1.3.132.1.11.1)
_ID_ECDH_SHA256_KDF = "1.3.132.1.11.1"


def envelope(data: bytes, cert: x509.Certificate) -> bytes:
    """A DER ContentInfo holding EnvelopedData of `data` for the holder of `cert`."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(data)
            .add_recipient(cert)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _ecdh_envelope(data, cert, key)
    raise TypeError(f"no S/MIME encryption to {type(key).__name__}")


# -- DER (X.690 §8) --------------------------------------------------------------------------


def _head(tag: int, size: int) -> bytes:
    """X.690 §8.1.2-8.1.3: identifier and definite length (short form below 128)."""
    if size < 0x80:
        return bytes((tag, size))
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length


def _tlv(tag: int, content: bytes) -> bytes:
    return _head(tag, len(content)) + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(sorted(items)))  # X.690 §11.6: DER sorts SET OF


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _bits(value: bytes) -> bytes:
    return _tlv(0x03, b"\x00" + value)


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out.extend(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _explicit(number: int, content: bytes) -> bytes:
    return _tlv(0xA0 | number, content)


# -- streaming -------------------------------------------------------------------------------


class EnvelopeWriter:
    """`write()` the `size` octets of plaintext, then `close()`: a DER ContentInfo of
    EnvelopedData goes to `out`, piece by piece. With the size known, the lengths are too
    (AES-CBC with PKCS #7 padding: the next multiple of 16 above `size`)."""

    def __init__(self, cert: x509.Certificate, out: Callable[[bytes], None], size: int) -> None:
        cek, iv = os.urandom(32), os.urandom(16)
        version, recipient = _recipient_info(cert, cek)
        self._out = out
        self._padder = padding.PKCS7(128).padder()
        self._cbc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        encrypted = (size // 16 + 1) * 16
        # RFC 5652 §6.1: EncryptedContentInfo with [0] IMPLICIT OCTET STRING (primitive).
        info = _oid(_ID_DATA) + _seq(_oid(_ID_AES256_CBC), _octets(iv)) + _head(0x80, encrypted)
        enveloped = _int(version) + _set(recipient) + _head(0x30, len(info) + encrypted) + info
        enveloped = _head(0x30, len(enveloped) + encrypted) + enveloped
        explicit = _head(0xA0, len(enveloped) + encrypted) + enveloped
        content_info = _oid(_ID_ENVELOPED_DATA) + explicit
        out(_head(0x30, len(content_info) + encrypted) + content_info)

    def write(self, data: bytes) -> None:
        self._out(self._cbc.update(self._padder.update(data)))

    def close(self) -> None:
        self._out(self._cbc.update(self._padder.finalize()) + self._cbc.finalize())


def _recipient_info(cert: x509.Certificate, cek: bytes) -> tuple[int, bytes]:
    """(EnvelopedData version, RecipientInfo) giving `cek` to the holder of `cert`."""
    key = cert.public_key()
    issuer_and_serial = _seq(cert.issuer.public_bytes(), _int(cert.serial_number))
    if isinstance(key, rsa.RSAPublicKey):
        # RFC 5652 §6.2.1: KeyTransRecipientInfo version 0 with issuerAndSerialNumber; then
        # §6.1 makes the EnvelopedData version 0 too.
        algorithm = _seq(_oid(_ID_RSA_ENCRYPTION), b"\x05\x00")  # RFC 3370 §4.2.1: NULL
        encrypted = key.encrypt(cek, asym_padding.PKCS1v15())
        return 0, _seq(_int(0), issuer_and_serial, algorithm, _octets(encrypted))
    if isinstance(key, ec.EllipticCurvePublicKey):
        # RFC 5652 §6.1: version 2 because a RecipientInfo other than ktri v0 is present.
        return 2, _key_agreement(cert, key, cek)
    raise TypeError(f"no S/MIME encryption to {type(key).__name__}")


# -- ECDH (RFC 5753) -------------------------------------------------------------------------


def _key_agreement(cert: x509.Certificate, key: ec.EllipticCurvePublicKey, cek: bytes) -> bytes:
    """KeyAgreeRecipientInfo ([1] IMPLICIT, version 3) for `cek` (RFC 5753 §3.1.1)."""
    ephemeral = ec.generate_private_key(key.curve)
    shared = ephemeral.exchange(ec.ECDH(), key)
    wrap_algorithm = _seq(_oid(_ID_AES256_WRAP))  # RFC 3565 §4.3: parameters absent
    # RFC 5753 §7.2: ECC-CMS-SharedInfo; suppPubInfo is the KEK length in bits, 32-bit big-endian.
    shared_info = _seq(wrap_algorithm, _explicit(2, _octets((256).to_bytes(4, "big"))))
    kek = X963KDF(algorithm=hashes.SHA256(), length=32, sharedinfo=shared_info).derive(shared)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # RFC 5753 §3.1.1: originatorKey with id-ecPublicKey, parameters absent (the recipient's
    # curve), the ephemeral public point as the BIT STRING.
    originator = _explicit(0, _tlv(0xA1, _seq(_oid(_ID_EC_PUBLIC_KEY)) + _bits(point)))
    issuer_and_serial = _seq(cert.issuer.public_bytes(), _int(cert.serial_number))
    recipient_key = _seq(issuer_and_serial, _octets(aes_key_wrap(kek, cek)))
    return _tlv(  # RFC 5652 §6.2.2: [1] IMPLICIT KeyAgreeRecipientInfo, version 3
        0xA1,
        _int(3)
        + originator
        + _seq(_oid(_ID_ECDH_SHA256_KDF), wrap_algorithm)
        + _seq(recipient_key),
    )


def _ecdh_envelope(data: bytes, cert: x509.Certificate, key: ec.EllipticCurvePublicKey) -> bytes:
    cek = os.urandom(32)
    iv = os.urandom(16)
    kari = _key_agreement(cert, key, cek)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    content_info = _seq(
        _oid(_ID_DATA),
        _seq(_oid(_ID_AES256_CBC), _octets(iv)),
        _tlv(0x80, ciphertext),  # [0] IMPLICIT OCTET STRING
    )
    # RFC 5652 §6.1: version 2 because a RecipientInfo other than ktri v0 is present.
    enveloped = _seq(_int(2), _set(kari), content_info)
    return _seq(_oid(_ID_ENVELOPED_DATA), _explicit(0, enveloped))
