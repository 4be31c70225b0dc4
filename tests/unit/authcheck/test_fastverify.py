"""FastVerify gives dkimpy's verdicts, from a parsed-key cache and OpenSSL's RSA."""

from __future__ import annotations

import dkim  # type: ignore[import-untyped]
import pytest

from hato.authcheck.dkim import DkimAlgorithm, generate_key
from hato.authcheck.fastverify import FastDKIM, parsed_key

PEM, RECORD = generate_key(DkimAlgorithm.RSA_SHA256)
HEAD = b"From: Alice <a@example.com>\r\nTo: b@example.net\r\nSubject:  hi  there\r\n"
BODIES = [
    b"",
    b"\r\n\r\n",
    b"plain text, one space each\r\n\r\n\r\n",
    b"runs  of \t whitespace \r\nand trailing \t\r\n",
    b"no final newline",
    b"bare\nline feeds\n",
]


def _record() -> bytes:
    return RECORD.encode("ascii") if isinstance(RECORD, str) else RECORD


def _dns(name: bytes, timeout: int = 5) -> bytes:
    return _record()


def _sign(body: bytes, canon: bytes) -> bytes:
    message = HEAD + b"\r\n" + body
    sig = dkim.sign(
        message, b"sel", b"example.com", PEM, canonicalize=(canon, canon),
        include_headers=[b"from", b"to", b"subject"],
    )  # fmt: skip
    return bytes(sig) + message


def _verdict(cls: type, message: bytes) -> str:
    try:
        return str(bool(cls(message).verify(dnsfunc=_dns)))
    except dkim.DKIMException as error:
        return type(error).__name__ + (": body hash" if "body hash" in str(error) else "")


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
@pytest.mark.parametrize("body", BODIES)
def test_same_verdicts_as_dkimpy(canon: bytes, body: bytes) -> None:
    signed = _sign(body, canon)
    tampered_body = signed + b"appended\r\n"
    tampered_head = signed.replace(b"Subject:  hi", b"Subject:  ho")
    spaced_body = signed.replace(b"\r\n\r\n", b"\r\n\r\n \r\n", 1) if body else signed
    for message in (signed, tampered_body, tampered_head, spaced_body):
        assert _verdict(FastDKIM, message) == _verdict(dkim.DKIM, message)
    assert _verdict(FastDKIM, signed) == "True"


def test_wrong_key_fails_like_dkimpy() -> None:
    _, other = generate_key(DkimAlgorithm.RSA_SHA256)
    message = _sign(b"hello\r\n", b"relaxed")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return other.encode("ascii") if isinstance(other, str) else other

    assert FastDKIM(message).verify(dnsfunc=dns) is False
    assert dkim.DKIM(message).verify(dnsfunc=dns) is False


def test_a_key_record_is_parsed_once() -> None:
    parsed_key.cache_clear()
    message = _sign(b"hello\r\n", b"relaxed")
    for _ in range(3):
        assert FastDKIM(message).verify(dnsfunc=_dns)
    info = parsed_key.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_a_new_key_record_is_a_miss() -> None:
    # The cache is keyed by the record's text: a rotated key is never answered from the old.
    parsed_key.cache_clear()
    first = parsed_key(_record())
    _, other = generate_key(DkimAlgorithm.RSA_SHA256)
    second = parsed_key(other.encode("ascii") if isinstance(other, str) else other)
    assert first.pk != second.pk
    assert parsed_key.cache_info().misses == 2


def test_an_unusable_record_is_not_kept() -> None:
    parsed_key.cache_clear()
    for _ in range(2):
        with pytest.raises(dkim.KeyFormatError):
            parsed_key(b"v=DKIM1; k=rsa; p=AAAA")
    assert parsed_key.cache_info().currsize == 0


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
@pytest.mark.parametrize(
    "added",
    [
        b"X-Unsigned:  added   later\r\n",  # not in h=: still valid
        b"From: <mallory@example.org>\r\n",  # a second From (dkimpy hashes it too): invalid
        b"From : <mallory@example.org>\r\n",  # a space before the colon: not a From to dkimpy
        b"subject: other\r\n",  # a signed name added above: the bottom one is still hashed
    ],
)
def test_added_fields_give_dkimpys_verdict(canon: bytes, added: bytes) -> None:
    message = added + _sign(b"hello  world\r\n", canon)
    assert _verdict(FastDKIM, message) == _verdict(dkim.DKIM, message)
