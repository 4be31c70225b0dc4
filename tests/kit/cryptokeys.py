"""Helpers for the crypto tests: OpenPGP keys made by GnuPG in a private GNUPGHOME, X.509
certificates made with cryptography (their private keys stay in the test)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


def need(tool: str) -> str:
    """The path of a Debian tool; in CI a missing one fails, elsewhere the test is skipped."""
    found = shutil.which(tool) or (f"/usr/lib/gnupg/{tool}" if tool.startswith("gpg-") else None)
    if found and os.path.exists(found):
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is missing (the CI image installs it)")
    pytest.skip(f"{tool} is not installed")


@dataclass(frozen=True)
class Gpg:
    home: Path

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        result = subprocess.run(
            ["gpg", "--batch", "--yes", "--passphrase", "", "--pinentry-mode", "loopback", *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(result.stderr.decode(errors="replace"))
        return result.stdout

    def fingerprint(self, uid: str) -> str:
        out = self.run("--with-colons", "--list-keys", uid).decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))

    def export(self, uid: str) -> bytes:
        return self.run("--export", uid)


@dataclass(frozen=True)
class Smime:
    cert_pem: bytes
    key_pem: bytes


def make_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    email: str = "carol@example.org",
    *,
    days: int = 30,
    start: dt.datetime | None = None,
    key_encipherment: bool = True,
    key_agreement: bool = True,
    in_san: bool = True,
) -> Smime:
    start = start or NOW - dt.timedelta(days=1)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, "Carol")]
    if not in_san:
        subject.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    name = x509.Name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=key_agreement,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
    )
    if in_san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Smime(cert.public_bytes(serialization.Encoding.PEM), key_pem)


MESSAGE = (
    b"Received: from client.example.net by mail.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Bob <bob@example.net>\r\n"
    b"To: Carol <carol@example.org>\r\n"
    b"Subject: the marker Zq7xK3 is secret\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: Tester 1.0\r\n"
    b"\r\n"
    b"Hello Carol,\r\nthe body marker Zq7xK3 is secret too.\r\n"
)
