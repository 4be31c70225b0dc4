"""Encryption cost per 10 KB message: PGP/MIME (RSA-3072, Curve25519) and S/MIME (RSA-2048,
EC P-256). Target: under 5 ms each. Run: .venv/bin/python benchmarks/encrypt_bench.py"""

from __future__ import annotations

import datetime as dt
import time

import pysequoia
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from hato.crypto import PublicKey, encrypt_message, parse_public_key
from hato.model import Address

ADDRESS = Address.parse("carol@example.org")
NOW = dt.datetime.now(dt.UTC)
BODY = b"".join(
    b"line %05d of a ten kilobyte message body, plain text.....\r\n" % i for i in range(170)
)
MESSAGE = b"From: b@example.net\r\nTo: carol@example.org\r\nSubject: bench\r\n\r\n" + BODY


def smime(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> PublicKey:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Carol")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(str(ADDRESS))]), False)
        .sign(key, hashes.SHA256())
    )
    return parse_public_key(cert.public_bytes(serialization.Encoding.PEM), ADDRESS, NOW)


def openpgp(suite: pysequoia.CipherSuite) -> PublicKey:
    tsk = pysequoia.Tsk.generate(f"Carol <{ADDRESS}>", cipher_suite=suite)
    return parse_public_key(bytes(tsk.extract_certificate()), ADDRESS, NOW)


def main() -> None:
    keys = {
        "PGP/MIME RSA-3072": openpgp(pysequoia.CipherSuite.RSA3k),
        "PGP/MIME Curve25519": openpgp(pysequoia.CipherSuite.Cv25519),
        "S/MIME RSA-2048": smime(rsa.generate_private_key(65537, 2048)),
        "S/MIME EC P-256": smime(ec.generate_private_key(ec.SECP256R1())),
    }
    print(f"message: {len(MESSAGE)} octets")
    for label, key in keys.items():
        encrypt_message(MESSAGE, key)  # warm the certificate cache
        rounds = 300
        start = time.perf_counter()
        for _ in range(rounds):
            encrypt_message(MESSAGE, key)
        per = (time.perf_counter() - start) / rounds * 1000
        print(f"{label:22} {per:6.3f} ms/message  {'OK' if per < 5 else 'OVER 5 ms'}")


if __name__ == "__main__":
    main()
