"""A test certificate authority and a server certificate signed by it (PEM files on disk).

Clients under test (swaks, msmtp, openssl, Postfix, smtplib, aiosmtplib) verify Hato's
certificate against `TestCA.ca_cert`, exactly as they would a real CA's, so no test needs to turn
certificate checks off. The leaf names "hato.test", "localhost" and 127.0.0.1 / ::1.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .server import TlsFiles

# The web endpoint's names for the domains of `submission_setup` (RFC 8461 §3.3: the MTA-STS
# policy is fetched with a certificate valid for mta-sts.DOMAIN).
SERVER_NAMES = (
    "hato.test",
    "localhost",
    "mta-sts.users.test",
    "autoconfig.users.test",
    "mta-sts.example.org",
    "autoconfig.example.org",
    "mta-sts.peer.test",  # the MTA-STS policy host of test_reports' recipient domain
)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class TestCA:
    """The files of one test PKI: the CA certificate, and the server's chain and key."""

    __test__ = False  # not a pytest test class despite its name

    ca_cert: Path
    server_cert: Path  # the leaf followed by the CA (a "fullchain.pem")
    server_key: Path

    def tls_files(self) -> TlsFiles:
        """The server's side, as a MailSetup's `tls`."""
        return TlsFiles(self.server_cert, self.server_key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and checks the host name."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_test_ca(directory: Path) -> TestCA:
    """Write a fresh CA and a server certificate for loopback into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Hato integration test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(SERVER_NAMES[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TestCA(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "fullchain.pem",
        server_key=directory / "privkey.pem",
    )
    pem = serialization.Encoding.PEM
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    files.server_key.write_bytes(_pem_key(key))
    files.server_key.chmod(0o600)
    for public in (directory, files.ca_cert, files.server_cert):
        # Postfix's smtp client runs as the postfix user and reads the CA file itself.
        public.chmod(0o755 if public.is_dir() else 0o644)
    return files
