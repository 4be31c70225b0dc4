"""Key import: good keys accepted, bad ones refused with a message that says why."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hato.crypto import KeyImportError, KeyKind, parse_public_key
from hato.model import Address
from kit.cryptokeys import NOW, Gpg, Smime, make_cert

CAROL = Address.parse("carol@example.org")


def test_openpgp_rsa_and_ecc_keys_are_accepted(gpg: Gpg) -> None:
    for uid in ("rsa@example.org", "ecc@example.org"):
        key = parse_public_key(gpg.export(uid), Address.parse(uid), NOW)
        assert key.kind is KeyKind.OPENPGP
        assert key.fingerprint == gpg.fingerprint(uid).lower()
    armored = gpg.run("--armor", "--export", "ecc@example.org")
    assert parse_public_key(armored, Address.parse("ECC@Example.ORG"), NOW).algorithm == "ECDH"


@pytest.mark.parametrize(
    ("uid", "address", "message"),
    [
        ("exp@example.org", "exp@example.org", "the certificate expired on 2020-12-31"),
        ("rsa@example.org", "bob@example.org", "the certificate is not for bob@example.org"),
        ("sig@example.org", "sig@example.org", "no encryption subkey"),
        ("old@example.org", "old@example.org", "unsupported algorithm"),
    ],
)
def test_bad_openpgp_keys(gpg: Gpg, uid: str, address: str, message: str) -> None:
    with pytest.raises(KeyImportError, match=message):
        parse_public_key(gpg.export(uid), Address.parse(address), NOW)


def test_an_openpgp_private_key_is_refused(gpg: Gpg) -> None:
    secret = gpg.run("--export-secret-keys", "ecc@example.org")
    with pytest.raises(KeyImportError, match="private key"):
        parse_public_key(secret, Address.parse("ecc@example.org"), NOW)


def test_garbage_is_not_a_key() -> None:
    with pytest.raises(KeyImportError, match="not an OpenPGP certificate"):
        parse_public_key(b"hello", CAROL, NOW)


def test_smime_rsa_and_ec_certificates_are_accepted(smime_rsa: Smime, smime_ec: Smime) -> None:
    rsa_key = parse_public_key(smime_rsa.cert_pem, CAROL, NOW)
    assert (rsa_key.kind, rsa_key.algorithm) == (KeyKind.SMIME, "RSA-2048")
    assert parse_public_key(smime_ec.cert_pem, CAROL, NOW).algorithm == "EC secp256r1"
    legacy = make_cert(ec.generate_private_key(ec.SECP384R1()), in_san=False)
    assert parse_public_key(legacy.cert_pem, CAROL, NOW).algorithm == "EC secp384r1"


@pytest.mark.parametrize(
    ("smime", "message"),
    [
        (
            lambda: make_cert(
                ec.generate_private_key(ec.SECP256R1()),
                start=dt.datetime(2020, 3, 1, tzinfo=dt.UTC),
            ),
            "the certificate expired on 2020-03-31",
        ),
        (
            lambda: make_cert(ec.generate_private_key(ec.SECP256R1()), "dave@example.org"),
            "not for carol@example.org: it names dave@example.org",
        ),
        (
            lambda: make_cert(rsa.generate_private_key(65537, 2048), key_encipherment=False),
            "lacks keyEncipherment",
        ),
        (
            lambda: make_cert(ec.generate_private_key(ec.SECP256R1()), key_agreement=False),
            "lacks keyAgreement",
        ),
        (lambda: make_cert(ed25519.Ed25519PrivateKey.generate()), "unsupported algorithm"),
        (lambda: make_cert(rsa.generate_private_key(65537, 1024)), "RSA-1024 is too weak"),
        (lambda: make_cert(ec.generate_private_key(ec.SECP256K1())), "unsupported algorithm"),
    ],
)
def test_bad_smime_certificates(smime: object, message: str) -> None:
    assert callable(smime)
    cert: Smime = smime()
    with pytest.raises(KeyImportError, match=message):
        parse_public_key(cert.cert_pem, CAROL, NOW)


def test_an_expired_key_counts_as_expired_later(smime_ec: Smime) -> None:
    key = parse_public_key(smime_ec.cert_pem, CAROL, NOW)
    assert not key.expired(NOW)
    assert key.expired(NOW + dt.timedelta(days=60))
