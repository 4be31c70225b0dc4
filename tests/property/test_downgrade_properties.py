"""Hypothesis: the rewrites for old next hops (delivery/downgrade.py) never raise, and what they
give is US-ASCII: RFC 2047 headers and 7-bit MIME, or None (the message then bounces)."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from hato.delivery.downgrade import downgrade_header, to_seven_bit

BOUNDED = settings(max_examples=300, deadline=None)

# Fragments that reach the parsers' corners: field names, address syntax, encoded-word
# markers, folding, UTF-8 and non-UTF-8 octets, MIME boundaries and nesting.
_PIECES = [
    b"a", b" ", b":", b"<", b">", b"@", b'"', b"\r\n", b"\r\n ", b"\xc3\xbc", b"\xff", b"(",
    b")", b",", b";", b"=?", b"?=", b"?q?", b"\\", b"[", b"]", b"--b", b"To: ", b"From: ",
    b"Subject: ", b"Cc: ", b"Comments: ", b"MIME-Version: 1.0\r\n", b"\r\n\r\n", b"--b\r\n",
    b"--b--\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain\r\n",
    b"Content-Transfer-Encoding: 8bit\r\n",
]  # fmt: skip
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join) | st.binary(max_size=300)


@BOUNDED
@given(_TEXT)
def test_downgrade_header_gives_ascii_or_none(head: bytes) -> None:
    out = downgrade_header(head)
    assert out is None or out.isascii()


@BOUNDED
@given(_TEXT)
def test_to_seven_bit_gives_ascii_or_none(message: bytes) -> None:
    out = to_seven_bit(message)
    assert out is None or out.isascii()


@BOUNDED
@given(st.text(max_size=80).filter(lambda t: "\r" not in t and "\n" not in t))
def test_an_unstructured_subject_survives_the_round_trip(subject: str) -> None:
    head = b"Subject: " + subject.encode("utf-8", "surrogatepass") + b"\r\n"
    out = downgrade_header(head)
    if out is None:
        return  # e.g. surrogates, or a text the parser cannot read back the same
    parsed = email.message_from_bytes(out + b"\r\n", policy=email.policy.default)
    assert " ".join(str(parsed["Subject"]).split()) == " ".join(subject.split())
