"""hato.acme.manager on a fake clock and a fake ACME server: an order at once for the
placeholder, backoff on failure, then a sleep until a third of the lifetime is left; and
hato.acme.alpn's RFC 8737 challenge certificate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from hato.acme.alpn import ID_PE_ACME_IDENTIFIER, challenge_context
from hato.acme.challenge import Tokens
from hato.acme.client import AcmeError, Order, Responder
from hato.acme.manager import BACKOFF_FIRST, CertificateManager
from hato.acme.store import CertFiles
from kit.clock import FakeClock

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
ORDER = Order("https://acme.test/dir", "postmaster@example.org", ("mail.example.org",), None)


def _cert(key_pem: bytes, issuer: str, days: int) -> bytes:
    key = load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def test_orders_at_once_backs_off_then_sleeps_until_a_third_is_left(tmp_path: Path) -> None:
    files = CertFiles(tmp_path / "acme")
    placeholder_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = placeholder_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    files.write(_cert(key_pem, "mail.example.org", 825), key_pem)
    clock, sleeps, swaps = FakeClock(NOW.timestamp(), NOW.timestamp()), list[float](), list[int]()
    answers = iter([False, False, True])

    def order(_order: Order, _account: bytes, key_pem: bytes, _r: Responder) -> bytes:
        if not next(answers):
            raise AcmeError("https://acme.test/dir: connection refused")
        return _cert(key_pem, "R11", 90)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    manager = CertificateManager(
        ORDER, files, Tokens(), lambda: swaps.append(1), clock, sleep=sleep, issue=order
    )
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(manager.run())
    assert sleeps[:2] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST]
    assert swaps == [1]
    # 60 of 90 days to go from the issue (at NOW + 180 s): sleeps at most a day at a time.
    assert sleeps[2] == 86400.0
    assert x509.load_pem_x509_certificate(files.cert.read_bytes()).issuer.rfc4514_string() == (
        "CN=R11"
    )


def test_the_tls_alpn_certificate_carries_the_key_authorization_digest(tmp_path: Path) -> None:
    context = challenge_context("mail.example.org", "token.thumbprint")
    assert isinstance(context, ssl.SSLContext)
    der = _served(context)
    cert = x509.load_der_x509_certificate(der)
    found = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert found.critical  # RFC 8737 §3
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert isinstance(found.value, x509.UnrecognizedExtension)
    assert found.value.value == b"\x04\x20" + digest


def _served(context: ssl.SSLContext) -> bytes:
    """The certificate a client sees when it offers ALPN acme-tls/1 (memory BIOs, no socket)."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.set_alpn_protocols(["acme-tls/1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="mail.example.org")
    server = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client.selected_alpn_protocol() == "acme-tls/1"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der
