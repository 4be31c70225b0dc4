"""Mail that says it is encrypted, for a user with a key (red team, 2026-12-08): stored as it
came only when its body really is one encrypted message to that user's key
(crypto/sealed.py); otherwise encrypted to the key like any plaintext.

Before, the label was enough: a `multipart/encrypted` whose parts were plaintext, a text body
that was an armored but only *signed* PGP MESSAGE (`gpg --sign --armor`: compressed
plaintext), or an `application/pkcs7-mime` of signed-data was stored in the clear for a user
whose mail the admin must not be able to read.
"""

from __future__ import annotations

import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from peers import maildir
from peers.hato import HatoServer, serving_with_keys
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import Gpg, make_cert, need

HEAD = (
    b"From: <alice@example.net>\r\nTo: <bob@example.org>\r\nSubject: sealed\r\n"
    b"MIME-Version: 1.0\r\n"
)
PGP_MIME = b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b1"'
NOTICE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gpg: Gpg) -> Iterator[HatoServer]:
    path = tmp_path_factory.mktemp("sealed")
    setup = MailSetup(domains=(DomainSetup("example.org", users=("bob", "carol")),))
    with serving_with_keys(
        path / "data", setup, {"bob@example.org": gpg.export("bob@example.org")}
    ) as hato:
        yield hato


def _deliver(server: HatoServer, message: bytes, rcpt: str = "bob") -> bytes:
    """Send `message` and the stored copy's octets."""
    box = server.mailbox(rcpt, "example.org")
    before = maildir.messages(box)
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.net", [f"{rcpt}@example.org"], message)
    return maildir.wait_for_new(box, before, 30)


def _pgp_mime(armored: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    return (
        HEAD + PGP_MIME + b"\r\n\r\n" + preamble
        + b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        + b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + b"\r\n--b1--\r\n" + epilogue
    )  # fmt: skip


def _wrapped(gpg: Gpg, stored: bytes) -> bytes:
    """The stored copy is Hato's own PGP/MIME (Subject hidden): what gpg opens of it."""
    assert b"Subject: ..." in stored and b"multipart/encrypted" in stored
    return gpg.run("--decrypt", input=stored.split(b"\r\n\r\n", 1)[1])


def test_a_real_pgp_mime_message_to_the_user_is_stored_as_it_came(
    server: HatoServer, gpg: Gpg
) -> None:
    armored = gpg.run("--armor", "--encrypt", "--recipient", "bob@example.org", input=b"hi\r\n")
    message = _pgp_mime(armored, preamble=NOTICE)  # Thunderbird's preamble
    assert _deliver(server, message).endswith(message)


@pytest.mark.parametrize(
    "body",
    [
        # The label, and plaintext in the parts.
        b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nThe plan is MARK.\r\n--b1--\r\n",
        b"The plan is MARK.\r\n",
    ],
)
def test_a_multipart_encrypted_label_on_plaintext_is_encrypted(
    server: HatoServer, gpg: Gpg, body: bytes
) -> None:
    marker = uuid.uuid4().hex.encode()
    stored = _deliver(server, HEAD + PGP_MIME + b"\r\n\r\n" + body.replace(b"MARK", marker))
    assert marker not in stored
    assert b"The plan is " + marker in _wrapped(gpg, stored)


def test_plaintext_around_real_ciphertext_is_encrypted(server: HatoServer, gpg: Gpg) -> None:
    armored = gpg.run("--armor", "--encrypt", "--recipient", "bob@example.org", input=b"x\r\n")
    for where in ("preamble", "epilogue"):
        marker = uuid.uuid4().hex.encode()
        text = b"The plan is " + marker + b".\r\n"
        message = _pgp_mime(armored, **{where: text})
        stored = _deliver(server, message)
        assert marker not in stored, where
        assert b"The plan is " + marker in _wrapped(gpg, stored)


def test_a_signed_only_pgp_message_is_encrypted(server: HatoServer, gpg: Gpg) -> None:
    # `gpg --sign --armor` writes "BEGIN PGP MESSAGE" around compressed plaintext: anyone
    # (the admin) reads it with `gpg --decrypt` and no key.
    marker = uuid.uuid4().hex.encode()
    signed = gpg.run("--armor", "--sign", input=b"The plan is " + marker + b".\r\n")
    inline = HEAD + b"Content-Type: text/plain\r\n\r\n" + signed.replace(b"\n", b"\r\n")
    for message in (inline, _pgp_mime(signed)):
        stored = _deliver(server, message)
        assert signed.splitlines()[3] not in stored  # the armor is inside our encryption
        assert signed.splitlines()[3] in _wrapped(gpg, stored)


def test_ciphertext_to_another_key_is_encrypted_to_the_users(
    server: HatoServer, gpg: Gpg, tmp_path: Path
) -> None:
    other = Gpg(tmp_path / "other")
    other.home.mkdir(mode=0o700)
    other.run("--quick-gen-key", "Eve <eve@example.net>", "future-default", "default", "never")
    armored = other.run("--armor", "--encrypt", "--recipient", "eve@example.net", input=b"x")
    subprocess.run(["gpgconf", "--homedir", str(other.home), "--kill", "all"], check=False)
    message = _pgp_mime(armored)
    stored = _deliver(server, message)
    assert not stored.endswith(message)
    assert armored.splitlines()[3] in _wrapped(gpg, stored)


def test_smime_signed_data_labelled_pkcs7_mime_is_encrypted(
    server: HatoServer, tmp_path: Path
) -> None:
    need("openssl")
    carol = make_cert(rsa.generate_private_key(65537, 2048), "carol@example.org")
    server.import_key("carol@example.org", carol.cert_pem, "carol.pem")
    (tmp_path / "key.pem").write_bytes(carol.key_pem)
    (tmp_path / "cert.pem").write_bytes(carol.cert_pem)
    marker = uuid.uuid4().hex.encode()
    content = b"Content-Type: text/plain\r\n\r\nThe plan is " + marker + b".\r\n"

    def cms(*args: str) -> bytes:
        return subprocess.run(
            ["openssl", "cms", "-outform", "PEM", *args],
            input=content,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout

    def smime(pem: bytes, params: bytes) -> bytes:
        b64 = b"".join(pem.splitlines(keepends=True)[1:-1]).replace(b"\n", b"\r\n")
        return (
            HEAD.replace(b"bob@", b"carol@")
            + b"Content-Type: application/pkcs7-mime" + params + b"\r\n"
            + b"Content-Transfer-Encoding: base64\r\n\r\n" + b64
        )  # fmt: skip

    signed = cms("-sign", "-nodetach", "-signer", str(tmp_path / "cert.pem"),
                 "-inkey", str(tmp_path / "key.pem"))  # fmt: skip
    stored = _deliver(server, smime(signed, b'; name="smime.p7m"'), "carol")
    assert b"smime-type=enveloped-data" in stored and signed.splitlines()[2] not in stored
    # A real enveloped-data message to carol is stored as it came.
    sealed = smime(
        cms("-encrypt", "-aes256", str(tmp_path / "cert.pem")), b"; smime-type=enveloped-data"
    )
    assert _deliver(server, sealed, "carol").endswith(sealed)
