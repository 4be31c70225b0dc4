"""Where the certificate lives: DATA_DIR/acme/ holds account-key.pem, key.pem (mode 0600) and
cert.pem (the full chain). Until the first order succeeds, cert.pem is a self-signed
placeholder, so the listeners can start; `due()` says to order at once then.

A new pair is written to temporary files, and renamed key first, then cert: the file watcher
(boot/reload.py) reloads on the cert's change, and a reader between the two renames sees a
mismatch and keeps the old context (then the manager's forced reload picks the pair up).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

RENEW_AT = 1 / 3  # of the lifetime left: Let's Encrypt's advice (90 days: renew at 30 left)


@dataclass(frozen=True, slots=True)
class CertFiles:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def account_key(self) -> Path:
        return self.directory / "account-key.pem"

    def write(self, chain_pem: bytes, key_pem: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.key, key_pem)
        tmp = self.cert.with_suffix(".tmp")
        tmp.write_bytes(chain_pem)
        os.replace(tmp, self.cert)

    def account_key_pem(self) -> bytes:
        """The account's key (RFC 8555 §7.3), created once: RSA 2048, the most widely taken."""
        try:
            return self.account_key.read_bytes()
        except FileNotFoundError:
            pass
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = _pem(key)
        write_private(self.account_key, pem)
        return pem


def new_key_pem() -> bytes:
    """A fresh certificate key at every order (P-256)."""
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def renewal_time(cert_pem: bytes) -> datetime.datetime:
    """When to order the next certificate: at once for the placeholder (self-signed), else
    when a third of the lifetime is left."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if cert.issuer == cert.subject:
        return start
    return end - (end - start) * RENEW_AT


def describe(cert_pem: bytes) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {
        "serial": format(cert.serial_number, "x"),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
