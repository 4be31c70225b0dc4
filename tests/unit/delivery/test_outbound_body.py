"""What goes on the wire to one next hop (delivery/outbound_body.py): unchanged, RFC 2047
headers, 7-bit MIME, or the reply that refuses the message for that hop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hato.delivery.outbound_body import (
    NEEDS_8BITMIME,
    NEEDS_SMTPUTF8,
    read_head,
    tls_required_no,
    wire_body,
)
from hato.delivery.smtp_client import BodySource, Capabilities
from hato.model import Address, QueuedMessage, Reply

MODERN = Capabilities(esmtp=True, eight_bit_mime=True, smtputf8=True)
NO_UTF8 = Capabilities(esmtp=True, eight_bit_mime=True)
OLD = Capabilities(esmtp=True)
PREFIX = b"Received: by test\r\n"


def _message(body: bytes, *, utf8: bool = True, path: str = "") -> QueuedMessage:
    params: dict[str, str | None] = {"SMTPUTF8": None} if utf8 else {}
    inline = None if path else body
    return QueuedMessage("Q1", Address("a", "b.test"), 0.0, path, len(body), PREFIX, params, inline)


def _wire(message: QueuedMessage, caps: Capabilities) -> bytes | Reply:
    async def run() -> bytes | Reply:
        head = await read_head(message)
        body: BodySource | Reply = await wire_body(message, head, caps)
        if isinstance(body, Reply):
            return body
        return b"".join([chunk async for chunk in body.chunks()])

    return asyncio.run(run())


UTF8_SUBJECT = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nHi\r\n"


def test_a_modern_hop_gets_the_stored_message() -> None:
    assert _wire(_message(UTF8_SUBJECT), MODERN) == PREFIX + UTF8_SUBJECT


def test_utf8_subject_is_encoded_for_a_hop_without_smtputf8() -> None:
    out = _wire(_message(UTF8_SUBJECT), NO_UTF8)
    assert out == PREFIX + b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nHi\r\n"


def test_without_the_smtputf8_parameter_the_message_goes_as_it_came() -> None:
    assert _wire(_message(UTF8_SUBJECT, utf8=False), NO_UTF8) == PREFIX + UTF8_SUBJECT


def test_utf8_address_in_a_header_is_refused_5_6_7() -> None:
    body = b"Cc: <j\xc3\xbc@b.test>\r\n\r\nHi\r\n"
    assert _wire(_message(body), NO_UTF8) == NEEDS_SMTPUTF8


def test_8bit_body_from_a_file_is_converted_or_refused(tmp_path: Path) -> None:
    mime = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xbc\r\n"
    (tmp_path / "mime").write_bytes(mime)
    out = _wire(_message(mime, utf8=False, path=str(tmp_path / "mime")), OLD)
    assert isinstance(out, bytes) and out.isascii() and b"=C3=BC" in out
    plain = b"Subject: not MIME\r\n\r\n\xc3\xbc\r\n"
    (tmp_path / "plain").write_bytes(plain)
    assert _wire(_message(plain, utf8=False, path=str(tmp_path / "plain")), OLD) == NEEDS_8BITMIME


def test_tls_required_no_is_found_in_the_header_section_only() -> None:
    assert tls_required_no(b"Subject: x\r\ntls-required:  no\r\n")
    assert not tls_required_no(b"Subject: x\r\nTLS-Required: Yes\r\n")
    head = asyncio.run(read_head(_message(b"Subject: x\r\n\r\nTLS-Required: No\r\n")))
    assert not tls_required_no(head)  # in the body: not a header field


def test_a_large_body_streams_after_the_new_header_section(tmp_path: Path) -> None:
    big = UTF8_SUBJECT + (b"x" * 78 + b"\r\n") * 2000
    (tmp_path / "big").write_bytes(big)
    message = _message(big, path=str(tmp_path / "big"))
    out = _wire(message, NO_UTF8)
    assert isinstance(out, bytes)
    rest = big[big.index(b"\r\n") + 2 :]  # the empty line, then the body, as stored
    assert out == PREFIX + b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" + rest
