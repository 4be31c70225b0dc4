"""FastVerify gives dkimpy's verdicts, from a parsed-key cache and OpenSSL's RSA."""

from __future__ import annotations

import random

import dkim  # type: ignore[import-untyped]
import pytest

from hato.authcheck.dkim import DkimAlgorithm, generate_key
from hato.authcheck.fastverify import (
    FastDKIM,
    name_index,
    parsed_key,
    rfc822_headers,
    selected,
    without_b_value,
)

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


# What a signature's value can hold around its b= tag: the pieces random values are made of.
_PIECES = [b";", b" ", b"\t", b"\r", b"\n", b"\r\n", b"b", b"=", b"a", b"Z", b"0", b"+", b"/",
           b"h", b"x", b"|", b"\x0b", b"\x0c", b"-", b"bh=", b" b=", b";b=", b"\r\n\t"]  # fmt: skip


def test_b_value_removal_is_dkimpys_on_many_values() -> None:
    # RFC 6376 §3.7: dkimpy's RE_BTAG is the oracle, on random (mostly malformed) values.
    rng = random.Random(6376)
    for _ in range(20_000):
        value = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
        assert without_b_value(value) == dkim.RE_BTAG.sub(b"\\1", value), value


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
def test_b_value_removal_is_dkimpys_on_real_signatures(canon: bytes) -> None:
    for body in BODIES:
        signed = _sign(body, canon)
        value = signed.split(b":", 1)[1].split(b"\r\nFrom:", 1)[0] + b"\r\n"
        refolded = value.replace(b"\r\n\t", b"\r\n    ").replace(b"; b=", b";\r\n\tb =\r\n ")
        for one in (value, refolded, value.rstrip(), value + b" "):
            assert without_b_value(one) == dkim.RE_BTAG.sub(b"\\1", one)


def test_b_value_removal_is_linear_on_hostile_values() -> None:
    # A 256 KiB header section's worth of white space after b=, and many b= tags: one pass,
    # without backtracking.
    spaces = b"; b=" + b" \t" * 128 * 1024 + b"!"
    assert without_b_value(spaces) == b"; b=" + b" \t" * 128 * 1024 + b"!"
    tags = b"; b=A" * 20_000
    assert without_b_value(tags) == b"; b=" * 20_000


def test_refolded_and_reordered_signatures_verify_like_dkimpy() -> None:
    signed = _sign(b"hello\r\n", b"relaxed")
    variants = [
        signed.replace(b"; b=", b";\r\n\tb=", 1),
        signed.replace(b"; b=", b"; b =", 1),
        signed.replace(b"; b=", b";b=", 1),
        signed.replace(b"; bh=", b";\r\n bh=", 1),
    ]
    for message in variants:
        assert _verdict(FastDKIM, message) == _verdict(dkim.DKIM, message)


def test_header_selection_is_dkimpys_on_many_lists() -> None:
    # RFC 6376 §5.4.2: each name of h= takes the bottom-most field of that name not yet taken.
    rng = random.Random(5422)
    names = [b"from", b"From", b"to", b"subject", b"x", b"from ", b"Subject"]
    for _ in range(5_000):
        headers = [(rng.choice(names), b" %d\r\n" % i) for i in range(rng.randint(0, 12))]
        wanted = [rng.choice(names).lower().rstrip() for _ in range(rng.randint(0, 12))]
        by_name = name_index(name.lower() for name, _ in headers)
        ours = [headers[index] for index in selected(by_name, list(wanted))]
        assert ours == dkim.select_headers(headers, wanted)


class _CountedName(bytes):
    """A field name that counts how often it is lower-cased (one look at the field)."""

    looks = 0

    def lower(self) -> bytes:
        _CountedName.looks += 1
        return bytes(self).lower()


def test_a_signature_naming_thousands_of_fields_looks_at_each_field_a_few_times() -> None:
    # A stranger's h= of N distinct names over N fields of those names (a 64 KiB header
    # section holds 4,000 of each): dkimpy's selection looked for each name from the bottom
    # again, N * N / 2 looks (3.4 s of CPU for 8,000), on the event loop for a small message.
    count = 2_000
    names = b":".join(b"x%d" % i for i in range(count))
    signed = _sign(b"hello\r\n", b"simple").replace(b"h=from : to : subject", b"h=from:" + names)
    fields = b"".join(b"X%d: v\r\n" % i for i in range(count))
    checker = FastDKIM(fields + signed)
    checker.headers = [(_CountedName(name), value) for name, value in checker.headers]
    _CountedName.looks = 0
    assert checker.verify(dnsfunc=_dns) is False  # the header hash no longer matches b=
    assert len(checker.signed_headers) == count + 1
    assert _CountedName.looks < 4 * len(checker.headers)


def test_a_long_folded_field_is_split_without_dkimpys_quadratic_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dkimpy's rfc822_parse copies a field's value again per continuation line: a 250 KiB
    # field folded every 4 octets cost half a second. FastDKIM parses a CRLF message itself.
    folded = b"X-Long: " + b"a\r\n " * 20_000 + b"a\r\n"
    signed = _sign(b"body\r\n", b"relaxed")
    message = folded + signed
    head = message[: message.index(b"\r\n\r\n") + 2]
    assert rfc822_headers(head) == dkim.rfc822_parse(head + b"\r\n")[0]
    monkeypatch.setattr(dkim, "rfc822_parse", None)  # never called for CRLF mail
    assert _verdict(FastDKIM, message) == "True"
