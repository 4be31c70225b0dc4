"""crypto/sealed.py: what counts as already encrypted to a user's key, and bounded work on
hostile input (red team, 2026-12-08)."""

from __future__ import annotations

import base64
import time

import pytest

from hato.crypto import PublicKey, encrypt_message, parse_public_key
from hato.crypto.mime import split_message
from hato.crypto.sealed import openpgp_key_ids, sealed_to
from hato.model import Address
from kit.cryptokeys import NOW, Gpg

ECC = Address.parse("ecc@example.org")
PGP_MIME = b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"'


def key(gpg: Gpg) -> PublicKey:
    return parse_public_key(gpg.export("ecc@example.org"), ECC, NOW)


def sealed(message: bytes, to: PublicKey) -> bool:
    parsed = split_message(message)
    return sealed_to(parsed, iter([parsed.body]), to)


def pgp_mime(armored: bytes, preamble: bytes = b"") -> bytes:
    return (
        PGP_MIME + b"\r\n\r\n" + preamble
        + b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        + b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + armored + b"\r\n--b--\r\n"
    )  # fmt: skip


def armor(packets: bytes) -> bytes:
    lines = base64.encodebytes(packets).replace(b"\n", b"\r\n")
    return b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + lines + b"-----END PGP MESSAGE-----"


def test_our_own_pgp_mime_and_gpgs_are_sealed(gpg: Gpg) -> None:
    to = key(gpg)
    ours = encrypt_message(b"Subject: x\r\n\r\nhello\r\n", to)
    assert sealed(ours, to) and encrypt_message(ours, to) is ours
    armored = gpg.run("--armor", "--encrypt", "--recipient", "ecc@example.org", input=b"x")
    armored = armored.replace(b"\n", b"\r\n")
    assert sealed(
        pgp_mime(armored, b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"), to
    )
    assert sealed(b"Content-Type: text/plain\r\n\r\n\r\n" + armored + b"\r\n", to)
    # From a pipe gpg writes partial body lengths (RFC 4880 §4.2.2.4): the chain is followed.
    big = gpg.run("--armor", "--compress-algo", "none", "--encrypt", "--recipient",
                  "ecc@example.org", input=bytes(300_000)).replace(b"\n", b"\r\n")  # fmt: skip
    assert sealed(pgp_mime(big), to)
    # Encrypted to another key of the keyring: not sealed for this one.
    other = gpg.run("--armor", "--encrypt", "--recipient", "rsa@example.org", input=b"x")
    assert not sealed(pgp_mime(other.replace(b"\n", b"\r\n")), to)


def test_packets_outside_the_encryption_are_not_sealed(gpg: Gpg) -> None:
    to = key(gpg)
    real = gpg.run("--encrypt", "--recipient", "ecc@example.org", input=b"x")
    literal = b"\xcb\x09b\x00\x00\x00\x00\x00" + b"hi"  # tag 11, "hi"
    assert sealed(pgp_mime(armor(real)), to)
    assert not sealed(pgp_mime(armor(literal)), to)
    assert not sealed(pgp_mime(armor(literal + real)), to)
    assert not sealed(pgp_mime(armor(real + literal)), to)  # data after the encrypted packet
    assert not sealed(pgp_mime(armor(real[:-1])), to)  # cut short
    signed = gpg.run("--sign", "--local-user", "ecc@example.org", input=b"secret")
    assert not sealed(pgp_mime(armor(signed)), to)


def _ours(to: PublicKey) -> bytes:
    """A PKESK v3 (tag 1, RFC 4880 §5.1) naming the key: the rest need not be valid."""
    key_id = sorted(openpgp_key_ids(to.data))[0]
    body = b"\x03" + key_id + b"\x12" + bytes(40)
    return bytes((0xC1, len(body))) + body


HOSTILE = {
    "a 5 MB line": None,
    "two million session key packet headers": b"\xc1\x05" * 2_000_000,
    "a chain of 1-octet partial pieces": b"OURS\xd2\xe0" + b"A\xe0" * 1_500_000 + b"\x01A",
    "a 2 GiB session key packet": b"\xc1\xff\x7f\xff\xff\xff",
    "a 2 GiB encrypted packet, cut short": b"OURS\xd2\xff\x7f\xff\xff\xff" + bytes(1000),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_bodies_cost_bounded_time(gpg: Gpg, name: str) -> None:
    to = key(gpg)
    packets = HOSTILE[name]
    if packets is None:
        message = PGP_MIME + b"\r\n\r\n" + b"x" * 5_000_000
    else:
        message = pgp_mime(armor(packets.replace(b"OURS", _ours(to))))
    started = time.process_time()
    assert not sealed(message, to)
    # Not a timing assertion on the machine's speed: a generous bound that only a loop
    # gone quadratic (or a parse of everything, byte by byte) would pass.
    assert time.process_time() - started < 30
