"""Rewriting for next hops without SMTPUTF8 or 8BITMIME (RFC 2047, RFC 6152 §3)."""

from __future__ import annotations

import email
import email.policy

import pytest

from hato.delivery.downgrade import downgrade_header, to_seven_bit


def _decoded(head: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(head + b"\r\n", policy=email.policy.default)
    return {k: str(v) for k, v in msg.items()}


def test_unstructured_and_display_names_become_encoded_words() -> None:
    head = (
        b'From: "J\xc3\xbcrgen M\xc3\xbcller" <j@example.com>\r\n'
        b"To: Zo\xc3\xab <z@example.org>, plain@example.org\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n aus K\xc3\xb6ln\r\n"
        b"X-Ascii: unchanged\r\n"
    )
    out = downgrade_header(head)
    assert out is not None and out.isascii()
    assert b"X-Ascii: unchanged\r\n" in out
    assert b"=?utf-8?" in out
    fields = _decoded(out)
    assert fields["Subject"] == "Grüße aus Köln"
    assert fields["From"] == "Jürgen Müller <j@example.com>"
    assert fields["To"] == "Zoë <z@example.org>, plain@example.org"


@pytest.mark.parametrize(
    "head",
    [
        b"To: <j\xc3\xbc@example.com>\r\n",  # RFC 6531 address: no ASCII form
        b"X-Custom: \xc3\xbc\r\n",  # a field we cannot know to be unstructured
        b"Subject: \xff\xfe\r\n",  # not UTF-8 (RFC 6532 §3.2)
        b"Message-ID: <\xc3\xbc@example.com>\r\n",
    ],
)
def test_what_cannot_be_encoded_losslessly_is_refused(head: bytes) -> None:
    assert downgrade_header(head) is None


def test_ascii_header_is_returned_unchanged() -> None:
    head = b"Subject: hello\r\n  folded\r\nFrom: a@b.example\r\n"
    assert downgrade_header(head) == head


MULTIPART = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, " + b"x" * 90 + b"\r\n"
    b".dot line\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"\r\n"
    b"\xff\x00\xfe\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"ascii part, untouched\r\n"
    b"--b1--\r\n"
)


def test_8bit_parts_are_reencoded_and_the_mime_tree_is_kept() -> None:
    out = to_seven_bit(MULTIPART)
    assert out is not None and out.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert b"Content-Transfer-Encoding: base64\r\n" in out
    assert b"Content-Transfer-Encoding: 8bit" not in out
    assert b"ascii part, untouched\r\n" in out and b"preamble\r\n" in out
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))  # RFC 2045 §6.7 (5)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    assert [p.get_content() for p in leaves] == [
        "Grüße, " + "x" * 90 + "\r\n.dot line",  # the last CRLF belongs to the delimiter
        b"\xff\x00\xfe",
        "ascii part, untouched",
    ]


def test_nested_message_is_converted_and_marked_7bit() -> None:
    inner = b"Subject: inner\r\nMIME-Version: 1.0\r\n\r\n\xc3\xbc\r\n"
    outer = (
        b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + inner
    )
    out = to_seven_bit(outer)
    assert out is not None and out.isascii()
    assert b"Content-Transfer-Encoding: 7bit\r\n" in out
    assert b"=C3=BC" in out


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: not MIME\r\n\r\n\xc3\xbc\r\n",  # no charset to name (RFC 2045 §4)
        b"MIME-Version: 1.0\r\nSubject: \xc3\xbc\r\n\r\nx\r\n",  # 8-bit header field
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"\xc3\xbc preamble\r\n--b\r\n\r\n\xc3\xbc\r\n--b--\r\n",
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\n\r\n\xc3\xbc\r\n",  # no closing delimiter
    ],
)
def test_what_cannot_be_converted_is_refused(message: bytes) -> None:
    assert to_seven_bit(message) is None
