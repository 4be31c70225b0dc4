"""crypto/sealed.py: what counts as already encrypted to a user's key, and bounded work on
hostile input (red team, 2026-12-08)."""

from __future__ import annotations

import base64
import time

import pytest

from hato.crypto import PublicKey, encrypt_message, parse_public_key
from hato.crypto.mime import split_message
from hato.crypto.sealed import sealed_to
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


@pytest.mark.parametrize(
    "hostile",
    [
        b"x" * 5_000_000,  # one line of 5 MB
        b"\xc1\x05" * 2_000_000,  # two million tiny PKESK headers (tag 1) of 5 octets
        b"\xd2\xe0" + b"A" * 3_000_000,  # a partial-length chain of 1-octet pieces
        b"\xc1\xff\x7f\xff\xff\xff",  # a 2 GiB session key packet
    ],
)
def test_hostile_bodies_cost_bounded_time(gpg: Gpg, hostile: bytes) -> None:
    to = key(gpg)
    message = (
        pgp_mime(armor(hostile))
        if not hostile.startswith(b"x")
        else PGP_MIME + b"\r\n\r\n" + hostile
    )
    started = time.process_time()
    assert not sealed(message, to)
    # Not a timing assertion on the machine's speed: a generous bound that only a loop
    # gone quadratic (or a parse of everything) would pass.
    assert time.process_time() - started < 30
