"""DANE (RFC 7672): TLSA matching on a real certificate, AD-bit rule, lookup outcomes."""

import asyncio
import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dnsserver import FakeResolver
from hato.delivery.dane import DaneState, lookup_tlsa, tlsa_data, tlsa_matches, tlsa_name
from hato.model.dns import DnsStatus, RdType, TlsaRecord


def _cert() -> tuple[bytes, bytes]:
    """A self-signed certificate (DER) and its SubjectPublicKeyInfo (DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert.public_bytes(serialization.Encoding.DER), spki


CERT, SPKI = _cert()
OTHER, _ = _cert()


@pytest.mark.parametrize(
    ("selector", "mtype", "data"),
    [
        (0, 0, CERT),
        (0, 1, hashlib.sha256(CERT).digest()),
        (0, 2, hashlib.sha512(CERT).digest()),
        (1, 0, SPKI),
        (1, 1, hashlib.sha256(SPKI).digest()),
        (1, 2, hashlib.sha512(SPKI).digest()),
    ],
    # The certificate is made at import: ids from the data would differ between xdist workers.
    ids=["cert-full", "cert-sha256", "cert-sha512", "spki-full", "spki-sha256", "spki-sha512"],
)
def test_dane_ee_matches_leaf_and_not_another(selector: int, mtype: int, data: bytes) -> None:
    assert tlsa_data(CERT, selector, mtype) == data
    record = TlsaRecord(3, selector, mtype, data)
    assert tlsa_matches(record, CERT)
    assert not tlsa_matches(record, OTHER)


def test_unusable_records_never_match() -> None:
    digest = hashlib.sha256(SPKI).digest()
    assert not tlsa_matches(TlsaRecord(2, 1, 1, digest), CERT)  # DANE-TA: left out
    assert not tlsa_matches(TlsaRecord(1, 1, 1, digest), CERT)  # PKIX-EE: not for SMTP
    assert not tlsa_matches(TlsaRecord(3, 1, 9, digest), CERT)  # unknown matching type
    assert not tlsa_matches(TlsaRecord(3, 1, 1, digest), b"not a certificate")


def _lookup(resolver: FakeResolver) -> object:
    return asyncio.run(lookup_tlsa(resolver, "mx.example.test", 25))


def test_lookup_needs_the_ad_bit() -> None:
    record = TlsaRecord(3, 1, 1, hashlib.sha256(SPKI).digest())
    resolver = FakeResolver({(tlsa_name("mx.example.test", 25), RdType.TLSA): [record]})
    insecure = asyncio.run(lookup_tlsa(resolver, "mx.example.test", 25))
    assert insecure.state is DaneState.NONE
    resolver.authenticated = True
    secure = asyncio.run(lookup_tlsa(resolver, "mx.example.test", 25))
    assert secure.state is DaneState.ACTIVE and secure.requires_tls
    verify = secure.verifier()
    assert verify is not None and verify(CERT) and not verify(OTHER)
    assert resolver.asked[-1] == ("_25._tcp.mx.example.test", RdType.TLSA)


def test_lookup_outcomes() -> None:
    name = tlsa_name("mx.example.test", 25)
    resolver = FakeResolver({(name, RdType.TLSA): DnsStatus.TEMPFAIL})
    assert asyncio.run(lookup_tlsa(resolver, "mx.example.test", 25)).state is DaneState.TEMPFAIL
    empty = FakeResolver({})
    none = asyncio.run(lookup_tlsa(empty, "mx.example.test", 25))
    assert none.state is DaneState.NONE and none.verifier() is None and not none.requires_tls
    only_ta = FakeResolver({(name, RdType.TLSA): [TlsaRecord(2, 0, 1, b"x" * 32)]})
    only_ta.authenticated = True
    unusable = asyncio.run(lookup_tlsa(only_ta, "mx.example.test", 25))
    assert unusable.state is DaneState.UNUSABLE and unusable.requires_tls
