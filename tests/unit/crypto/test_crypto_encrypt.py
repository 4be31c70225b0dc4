"""Encryption round trips with the real tools (gpg --decrypt, openssl cms -decrypt), header
protection, and already-encrypted mail left alone."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import subprocess
from pathlib import Path

import pytest

from hato.crypto import (
    EncryptionError,
    MessageTooLarge,
    PublicKey,
    encrypt_message,
    parse_public_key,
)
from hato.model import Address
from kit.cryptokeys import MESSAGE, NOW, Gpg, Smime, need

CAROL = Address.parse("carol@example.org")
MARKER = b"Zq7xK3"


def header_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def check_inner(inner: bytes) -> None:
    """The decrypted part is the original: same body, every original field, the Content-Type
    marked hp="cipher", and HP-Outer fields for what the outer header shows."""
    head, body = header_and_body(inner)
    assert body == header_and_body(MESSAGE)[1]
    original = header_and_body(MESSAGE)[0].split(b"\r\n")
    lines = head.split(b"\r\n")
    for line in original:
        if line.startswith(b"Content-Type:"):
            assert line + b";" in lines and b' hp="cipher"' in lines
        else:
            assert line in lines
    assert b"HP-Outer: Subject: ..." in lines
    assert b"HP-Outer: From: Bob <bob@example.net>" in lines
    assert not any(line.startswith(b"HP-Outer: Received") for line in lines)


def check_outer(outer: bytes, content_type: str) -> None:
    assert MARKER not in outer
    parsed = email.message_from_bytes(outer, policy=email.policy.default)
    assert parsed["Subject"] == "..."
    assert parsed["From"] == "Bob <bob@example.net>"
    assert parsed["Message-ID"] == "<1@example.net>"
    assert parsed["Received"] is not None
    assert parsed["X-Mailer"] is None  # not needed for delivery: only inside
    assert parsed.get_content_type() == content_type
    assert b"\r\n" in outer and b"\n" not in outer.replace(b"\r\n", b"")


@pytest.mark.parametrize("uid", ["rsa@example.org", "ecc@example.org"])
def test_pgp_mime_round_trip_with_gpg(gpg: Gpg, tmp_path: Path, uid: str) -> None:
    key = parse_public_key(gpg.export(uid), Address.parse(uid), NOW)
    outer = encrypt_message(MESSAGE, key)
    check_outer(outer, "multipart/encrypted")
    parsed = email.message_from_bytes(outer, policy=email.policy.default)
    assert parsed.get_param("protocol") == "application/pgp-encrypted"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "application/pgp-encrypted",
        "application/octet-stream",
    ]
    assert parts[0].get_content().strip() == b"Version: 1"
    armored = parts[1].get_content()
    armored = armored if isinstance(armored, bytes) else armored.encode()
    check_inner(gpg.run("--decrypt", input=armored))


@pytest.mark.parametrize("which", ["smime_rsa", "smime_ec"])
def test_smime_round_trip_with_openssl(
    request: pytest.FixtureRequest, tmp_path: Path, which: str
) -> None:
    openssl = need("openssl")
    smime: Smime = request.getfixturevalue(which)
    key = parse_public_key(smime.cert_pem, CAROL, NOW)
    outer = encrypt_message(MESSAGE, key)
    check_outer(outer, "application/pkcs7-mime")
    parsed = email.message_from_bytes(outer, policy=email.policy.default)
    assert parsed.get_param("smime-type") == "enveloped-data"
    (tmp_path / "key.pem").write_bytes(smime.key_pem)
    (tmp_path / "cert.pem").write_bytes(smime.cert_pem)
    (tmp_path / "msg.eml").write_bytes(outer)
    result = subprocess.run(
        [openssl, "cms", "-decrypt", "-inkey", "key.pem", "-recip", "cert.pem", "-in", "msg.eml"],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    check_inner(result.stdout)


def smime_key(smime: Smime) -> PublicKey:
    return parse_public_key(smime.cert_pem, CAROL, NOW)


@pytest.mark.parametrize(
    "message",
    [
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
        b'boundary="b"\r\nSubject: x\r\n\r\n--b--\r\n',
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Subject: x\r\n\r\nMIIB\r\n",
        b"Content-Type: application/x-pkcs7-mime; name=smime.p7m\r\n\r\nMIIB\r\n",
        b"Subject: x\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n"
        b"-----END PGP MESSAGE-----\r\n",
    ],
)
def test_an_encryption_label_on_what_is_not_ciphertext_is_encrypted(
    smime_rsa: Smime, message: bytes
) -> None:
    # Only a body that is one encrypted message to the key is stored as it came
    # (crypto/sealed.py; test_crypto_sealed.py): these only say so.
    assert b"smime-type=enveloped-data" in encrypt_message(message, smime_key(smime_rsa))


def test_mail_encrypted_to_the_key_is_unchanged(smime_rsa: Smime) -> None:
    key = smime_key(smime_rsa)
    sealed = encrypt_message(b"Subject: x\r\n\r\nhello\r\n", key)
    assert encrypt_message(sealed, key) is sealed


@pytest.mark.parametrize(
    "message",
    [
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n",
        b"Subject: quoting\r\n\r\n> -----BEGIN PGP MESSAGE-----\r\n> x\r\n",
    ],
)
def test_signed_or_quoting_mail_is_encrypted(smime_rsa: Smime, message: bytes) -> None:
    assert b"smime-type=enveloped-data" in encrypt_message(message, smime_key(smime_rsa))


def test_lf_messages_keep_lf_outside(smime_ec: Smime) -> None:
    message = MESSAGE.replace(b"\r\n", b"\n")
    outer = encrypt_message(message, smime_key(smime_ec))
    assert b"\r" not in outer and b"\nSubject: ...\n" in outer


def test_a_message_without_header_fields_gets_text_plain(smime_ec: Smime) -> None:
    outer = encrypt_message(b"just a body\r\n", smime_key(smime_ec))
    assert outer.startswith(b"Subject: ...\r\nMIME-Version: 1.0\r\n")


def test_an_expired_key_is_not_used(smime_ec: Smime) -> None:
    with pytest.raises(EncryptionError, match="expired"):
        encrypt_message(MESSAGE, smime_key(smime_ec), now=NOW + dt.timedelta(days=90))


def test_too_large(smime_ec: Smime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hato.crypto.encrypt.MAX_MESSAGE_SIZE", 100)
    with pytest.raises(MessageTooLarge):
        encrypt_message(MESSAGE, smime_key(smime_ec))
