"""crypto/envelope.py through crypto/sealed.py: S/MIME enveloped-data to the user's certificate
is recognised in DER and in BER with indefinite lengths, as real openssl writes them (`openssl
cms -encrypt -stream`), and stored as it came; anything else about it is not, in bounded work.
And OpenPGP with hidden recipients (`gpg --throw-keyids`) stays unverified (a second layer)."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from hato.crypto import PublicKey, encrypt_message, parse_public_key
from hato.crypto.mime import split_message
from hato.crypto.sealed import sealed_to
from hato.model import Address
from kit.cryptokeys import NOW, Gpg, Smime, need

CAROL = Address.parse("carol@example.org")
ECC = Address.parse("ecc@example.org")
MESSAGE = b"Content-Type: text/plain\r\nSubject: secret\r\n\r\nThe plan.\r\n"
HEADER = (
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
)


def _key(smime: Smime) -> PublicKey:
    return parse_public_key(smime.cert_pem, CAROL, NOW)


def _openssl_der(tmp: Path, smime: Smime, *args: str) -> bytes:
    """The ContentInfo openssl writes for `smime`'s certificate (`-stream`: BER, indefinite)."""
    need("openssl")
    (tmp / "cert.pem").write_bytes(smime.cert_pem)
    (tmp / "in.txt").write_bytes(MESSAGE)
    subprocess.run(
        ["openssl", "cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", *args,
         "-in", str(tmp / "in.txt"), "-out", str(tmp / "out.der"), str(tmp / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return (tmp / "out.der").read_bytes()


def _mail(der: bytes) -> bytes:
    return HEADER + base64.encodebytes(der).replace(b"\n", b"\r\n")


def _sealed(message: bytes, to: PublicKey) -> bool:
    parsed = split_message(message)
    return sealed_to(parsed, iter([parsed.body]), to)


def _indefinite(der: bytes) -> bool:
    return der[:2] == b"\x30\x80"


@pytest.mark.parametrize("which", ["smime_rsa", "smime_ec"])
def test_openssl_streamed_ber_to_the_certificate_is_stored_as_it_came(
    request: pytest.FixtureRequest, tmp_path: Path, which: str
) -> None:
    smime: Smime = request.getfixturevalue(which)
    ber = _openssl_der(tmp_path, smime, "-stream")
    assert _indefinite(ber)  # what this test is about: X.690 §8.1.3.6
    message = _mail(ber)
    assert _sealed(message, _key(smime))
    assert encrypt_message(message, _key(smime)) is message  # no second layer


def test_a_big_streamed_message_is_followed_piece_by_piece(
    smime_rsa: Smime, tmp_path: Path
) -> None:
    need("openssl")
    (tmp_path / "cert.pem").write_bytes(smime_rsa.cert_pem)
    (tmp_path / "in.txt").write_bytes(MESSAGE + b"x" * 2_000_000)
    subprocess.run(
        ["openssl", "cms", "-encrypt", "-stream", "-aes256", "-binary", "-outform", "DER",
         "-in", str(tmp_path / "in.txt"), "-out", str(tmp_path / "out.der"),
         str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ber = (tmp_path / "out.der").read_bytes()
    assert _indefinite(ber)
    parsed = split_message(_mail(ber))
    # Fed in small chunks, as the body is read from its file.
    body = parsed.body
    assert sealed_to(
        parsed, (body[i : i + 1000] for i in range(0, len(body), 1000)), _key(smime_rsa)
    )


def test_openssl_der_is_still_recognised(smime_ec: Smime, tmp_path: Path) -> None:
    der = _openssl_der(tmp_path, smime_ec)
    assert not _indefinite(der)
    assert _sealed(_mail(der), _key(smime_ec))


def test_ber_to_another_certificate_is_not_sealed(
    smime_rsa: Smime, smime_ec: Smime, tmp_path: Path
) -> None:
    ber = _openssl_der(tmp_path, smime_rsa, "-stream")
    assert not _sealed(_mail(ber), _key(smime_ec))
    assert b"smime-type=enveloped-data" in encrypt_message(_mail(ber), _key(smime_ec))


def _without_content(ber: bytes) -> bytes:
    """The ContentInfo with its encrypted content taken out (detached): from the constructed
    [0] of the EncryptedContentInfo to its end-of-contents octets."""
    start = ber.index(b"\xa0\x80\x04", 20)
    end = ber.index(b"\x00\x00", start)
    return ber[:start] + ber[end + 2 :]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda b: b + b"\x04\x01x", id="data after it"),
        pytest.param(lambda b: b + b"\x00\x00", id="an end-of-contents too many"),
        pytest.param(lambda b: b[:-2], id="an end-of-contents missing"),
        pytest.param(lambda b: b[:-200], id="cut short"),
        pytest.param(_without_content, id="no encrypted content"),
        pytest.param(lambda b: b.replace(b"\x30\x80", b"\x31\x80", 1), id="not a sequence"),
        pytest.param(
            lambda b: b[:2] + b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01" + b[13:],
            id="id-data",
        ),
    ],
)
def test_malformed_ber_is_not_sealed(smime_rsa: Smime, tmp_path: Path, change: object) -> None:
    ber = _openssl_der(tmp_path, smime_rsa, "-stream")
    assert callable(change)
    assert _sealed(_mail(ber), _key(smime_rsa))
    assert not _sealed(_mail(change(ber)), _key(smime_rsa))


def _head_of(ber: bytes) -> bytes:
    """Up to the constructed [0] of the encrypted content (its pieces come next)."""
    return ber[: ber.index(b"\xa0\x80\x04", 20) + 2]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x04\x00" * 2_000_000, id="two million empty pieces"),
        pytest.param(b"\x24\x80" * 1_000_000, id="a million nested pieces"),
        pytest.param(b"\x04\x84\x7f\xff\xff\xff" + bytes(1000), id="a 2 GiB piece, cut short"),
    ],
)
def test_hostile_ber_costs_bounded_time(smime_rsa: Smime, tmp_path: Path, tail: bytes) -> None:
    ber = _head_of(_openssl_der(tmp_path, smime_rsa, "-stream")) + tail
    started = time.process_time()
    assert not _sealed(_mail(ber), _key(smime_rsa))
    # Not a timing assertion on the machine's speed: a generous bound that only a walk over
    # every element (millions of Python steps) or a recursion without end would pass.
    assert time.process_time() - started < 30


def test_hidden_recipients_are_not_taken_as_sealed(gpg: Gpg) -> None:
    # RFC 4880 §5.1: key ID zero, the "wild card". Which key such a session-key packet is for
    # cannot be told from the public key (docs/encryption.md), so it gets a second layer.
    to = parse_public_key(gpg.export("ecc@example.org"), ECC, NOW)
    for args in ((), ("--throw-keyids",)):
        armored = gpg.run(
            "--armor", *args, "--encrypt", "--recipient", "ecc@example.org", input=b"secret"
        )
        message = b"Content-Type: text/plain\r\n\r\n" + armored.replace(b"\n", b"\r\n")
        assert _sealed(message, to) is not bool(args)
        assert gpg.run("--decrypt", input=armored) == b"secret"  # the user's gpg finds its key
