"""hato.acme.store and challenge: when to renew, the files' modes, the http-01 answers."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from hato.acme.challenge import Tokens, challenge_app
from hato.acme.store import CertFiles, describe, new_key_pem, renewal_time

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(issuer: str, days: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("mail.example.org"))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(0xABC)
        .not_valid_before(START)
        .not_valid_after(START + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def test_renews_with_a_third_of_the_lifetime_left() -> None:
    assert renewal_time(_cert("R11", 90)) == START + datetime.timedelta(days=60)


def test_the_self_signed_placeholder_is_due_at_once() -> None:
    assert renewal_time(_cert("mail.example.org", 825)) == START


def test_describe_gives_the_serial_in_hex() -> None:
    assert describe(_cert("R11", 90))["serial"] == "abc"


def test_keys_are_mode_0600(tmp_path: Path) -> None:
    files = CertFiles(tmp_path / "acme")
    files.write(_cert("R11", 90), new_key_pem())
    files.account_key_pem()
    for path in (files.key, files.account_key):
        assert path.stat().st_mode & 0o777 == 0o600
    assert files.account_key_pem() == files.account_key.read_bytes()  # made once


def test_answers_known_tokens_only() -> None:
    asyncio.run(_answers_known_tokens_only())


async def _answers_known_tokens_only() -> None:
    tokens = Tokens()
    tokens.put("hato.test", "tok_1", "tok_1.thumbprint")
    async with TestClient(TestServer(challenge_app(tokens))) as client:
        found = await client.get("/.well-known/acme-challenge/tok_1")
        assert found.status == 200
        assert await found.text() == "tok_1.thumbprint"
        assert (await client.get("/.well-known/acme-challenge/other")).status == 404
        tokens.remove("hato.test", "tok_1")
        assert (await client.get("/.well-known/acme-challenge/tok_1")).status == 404
