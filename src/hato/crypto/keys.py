"""Users' public keys: parse and check an OpenPGP certificate or an S/MIME (X.509) certificate.

A key is accepted only if mail can be encrypted to it today for its address: the address is on it,
it is neither expired nor revoked, it has an encryption-capable key of an algorithm we support.
Anything else is a `KeyImportError` whose message says what is wrong and what to do. Private keys
are refused: the server never holds one.

Must not import anything of hato but model.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hato.model import Address

if TYPE_CHECKING:
    from pysequoia.packet import Packet

MIN_RSA_BITS = 2048
# NIST curves for S/MIME ECDH key agreement (RFC 5753 §7.1.4; RFC 8551 §2.3 names P-256).
SMIME_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class KeyImportError(ValueError):
    """A key that cannot be used; the message says why, for the user who uploaded it."""


class KeyRevoked(KeyImportError):
    """The certificate is revoked (its owner says it must not be used any more)."""

    def __init__(self, message: str, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class KeyKind(enum.Enum):
    OPENPGP = "openpgp"
    SMIME = "smime"


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A checked public key for one address: `data` is the binary certificate (OpenPGP packets
    or X.509 DER)."""

    kind: KeyKind
    address: Address
    data: bytes = field(repr=False)
    fingerprint: str  # OpenPGP v4 fingerprint, or SHA-256 of the X.509 DER; lower-case hex
    expires: dt.datetime | None
    algorithm: str  # for people: "RSA-3072", "ECDH", "EC secp256r1"

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and self.expires <= now


def parse_public_key(data: bytes, address: Address, now: dt.datetime) -> PublicKey:
    """The key in `data` (armored or binary OpenPGP, PEM or DER X.509) for `address`."""
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN CERTIFICATE-----") or _looks_like_der(stripped):
        return parse_smime(data, address, now)
    if b"PRIVATE KEY-----" in data and b"PGP" not in data:
        raise KeyImportError(_PRIVATE)
    return parse_openpgp(data, address, now)


_PRIVATE = (
    "this is a private key; the server must never hold it: upload only the public key "
    "(gpg --export ADDRESS, or the certificate in PEM without its key)"
)


def _looks_like_der(data: bytes) -> bool:
    # X.509 DER is a SEQUENCE (0x30) with a long length; OpenPGP binary packets have bit 7 set.
    return len(data) > 4 and data[0] == 0x30 and data[1] in (0x82, 0x83)


def address_matches(text: str, address: Address) -> bool:
    """Whether a user ID or e-mail string names `address` (domain and local part compared
    case-insensitively, like our user store does)."""
    _, mail = email.utils.parseaddr(text)
    if not mail and "@" in text and "<" not in text:
        mail = text.strip()
    local, _, domain = mail.rpartition("@")
    return bool(local) and local.lower() == address.local.lower() and _same_domain(domain, address)


def _same_domain(domain: str, address: Address) -> bool:
    try:
        theirs = domain.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return theirs == address.domain_ascii.lower()


# -- OpenPGP ---------------------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    # Sequoia errors carry "Caused by:" chains and, with RUST_BACKTRACE, a backtrace.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = next((ln for ln in lines if re.match(r"^\d+: ", ln) or "since" in ln), "")
    head = lines[0] if lines else type(exc).__name__
    return f"{head} ({cause})" if cause and cause != head else head


def parse_openpgp(data: bytes, address: Address, now: dt.datetime) -> PublicKey:
    """Check an OpenPGP certificate (RFC 9580) with Sequoia's standard policy."""
    try:
        import pysequoia
        from pysequoia import packet
    except ImportError:
        raise KeyImportError(
            "OpenPGP keys need pysequoia, a dependency of hato that is missing here: "
            "pip install 'pysequoia>=0.1.30' (in hato's environment)"
        ) from None
    try:
        packets = list(packet.PacketPile.from_bytes(data))
    except Exception as exc:  # pysequoia raises RuntimeError/ValueError for any malformed input
        raise KeyImportError(f"not an OpenPGP certificate: {_first_line(exc)}") from None
    tags = [p.tag for p in packets]
    if packet.Tag.SecretKey in tags or packet.Tag.SecretSubkey in tags:
        raise KeyImportError(_PRIVATE)
    if sum(1 for p in packets if p.tag == packet.Tag.PublicKey) != 1:
        raise KeyImportError("the file must hold exactly one OpenPGP certificate")
    try:
        cert = pysequoia.Cert.from_bytes(data)
        # Sequoia checks its StandardPolicy lazily, when a property needs a valid binding.
        revoked, expires, fingerprint = cert.is_revoked, cert.expiration, cert.fingerprint
        uids = [str(uid) for uid in cert.user_ids]
    except Exception as exc:
        # The policy rejects weak algorithms (RSA < 2048, DSA, ElGamal) and SHA-1 bindings.
        raise KeyImportError(
            f"unsupported algorithm: the certificate is rejected by policy: {_first_line(exc)}; "
            "make a new key (e.g. gpg --quick-gen-key ADDRESS future-default)"
        ) from None
    if revoked:
        raise KeyRevoked(f"the certificate {fingerprint} is revoked", fingerprint)
    if expires is not None and expires <= now:
        raise KeyImportError(
            f"the certificate expired on {expires:%Y-%m-%d}; extend it "
            "(gpg --quick-set-expire FINGERPRINT 2y) and upload it again"
        )
    if not any(address_matches(uid, address) for uid in uids):
        raise KeyImportError(
            f"the certificate is not for {address}: its user IDs are {', '.join(uids) or 'none'}"
        )
    algorithm, subkey_expires = _encryption_subkey(packets, now)
    try:
        pysequoia.encrypt(b"", [cert])  # the real test: Sequoia finds a key it will encrypt to
    except Exception as exc:
        raise KeyImportError(f"no usable encryption subkey: {_first_line(exc)}") from None
    if subkey_expires is not None and (expires is None or subkey_expires < expires):
        expires = subkey_expires
    return PublicKey(KeyKind.OPENPGP, address, bytes(cert), fingerprint, expires, algorithm)


def _encryption_subkey(packets: list[Packet], now: dt.datetime) -> tuple[str, dt.datetime | None]:
    """The algorithm and expiry of the longest-lived unexpired encryption-capable key.

    RFC 9580 §5.2.3.29: key flags 0x04/0x08 on the binding signature that follows a key packet;
    §5.2.3.13: its Key Expiration Time counts from the key's creation.
    """
    from pysequoia.packet import Tag

    found: list[tuple[str, dt.datetime | None]] = []
    expired_any = False
    current: Packet | None = None
    for p in packets:
        if p.tag in (Tag.PublicKey, Tag.PublicSubkey):
            current = p
            continue
        flags = p.key_flags if p.tag == Tag.Signature else None
        if current is None or flags is None:
            continue
        if not (flags.transport_encryption or flags.storage_encryption):
            continue
        created = current.key_created
        period = p.key_validity_period
        until = created + period if created is not None and period else None
        if until is not None and until <= now:
            expired_any = True
            continue
        found.append((str(current.key_algorithm).rsplit(".", 1)[-1], until))
    if not found:
        if expired_any:
            raise KeyImportError(
                "the encryption subkey has expired; extend it and upload the certificate again"
            )
        raise KeyImportError(
            "no encryption subkey: the certificate can only sign; add one "
            "(gpg --quick-add-key FINGERPRINT cv25519 encr) and upload it again"
        )
    found.sort(key=lambda item: item[1] or dt.datetime.max.replace(tzinfo=dt.UTC))
    return found[-1]


# -- S/MIME ----------------------------------------------------------------------------------


def parse_smime(data: bytes, address: Address, now: dt.datetime) -> PublicKey:
    """Check an X.509 certificate for S/MIME encryption (RFC 8550 §3, §4.4)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise KeyImportError(f"not an X.509 certificate: {exc}") from None
    if cert.not_valid_after_utc <= now:
        raise KeyImportError(
            f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; ask your CA for "
            "a new one"
        )
    if cert.not_valid_before_utc > now:
        raise KeyImportError(
            f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        )
    emails = _cert_emails(cert)
    # RFC 8550 §3: the address is in subjectAltName rfc822Name (or, legacy, the subject's
    # emailAddress attribute).
    if not any(address_matches(mail, address) for mail in emails):
        raise KeyImportError(
            f"the certificate is not for {address}: it names {', '.join(emails) or 'no address'}"
        )
    algorithm = _smime_algorithm(cert)
    _check_usage(cert, algorithm)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    der = cert.public_bytes(serialization.Encoding.DER)
    return PublicKey(KeyKind.SMIME, address, der, fingerprint, cert.not_valid_after_utc, algorithm)


def _cert_emails(cert: x509.Certificate) -> list[str]:
    emails: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        emails.extend(san.value.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        emails.append(str(attribute.value))
    return emails


def _smime_algorithm(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyImportError(
                f"unsupported algorithm: RSA-{key.key_size} is too weak; at least "
                f"RSA-{MIN_RSA_BITS} is needed"
            )
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, SMIME_CURVES):
            raise KeyImportError(
                f"unsupported algorithm: EC curve {key.curve.name}; use P-256, P-384 or P-521"
            )
        return f"EC {key.curve.name}"
    raise KeyImportError(
        f"unsupported algorithm: {type(key).__name__.removesuffix('PublicKey').lstrip('_')} "
        "keys cannot encrypt; S/MIME encryption needs an RSA or EC (P-256/384/521) certificate"
    )


def _check_usage(cert: x509.Certificate, algorithm: str) -> None:
    # RFC 8550 §4.4.2: keyEncipherment for RSA key transport, keyAgreement for ECDH.
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None:
        if algorithm.startswith("RSA") and not usage.key_encipherment:
            raise KeyImportError(
                "no encryption usage: the certificate's keyUsage lacks keyEncipherment "
                "(it is a signing-only certificate)"
            )
        if algorithm.startswith("EC") and not usage.key_agreement:
            raise KeyImportError(
                "no encryption usage: the certificate's keyUsage lacks keyAgreement "
                "(it is a signing-only certificate)"
            )
    # RFC 8550 §4.4.4: with extendedKeyUsage present, emailProtection must be among them.
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku and (
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
    ):
        raise KeyImportError(
            "the certificate is not for e-mail: its extendedKeyUsage lacks emailProtection"
        )
