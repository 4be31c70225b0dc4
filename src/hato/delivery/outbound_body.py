"""What one queued message looks like on the wire to one next hop: its header section, read
once per attempt, and the body to send once the next hop's EHLO keywords are known.

Theory of operation. `read_head` reads the stored prefix and the body's header section (at
most HEAD_LIMIT octets; never the whole body). It answers, before any connection is made,
whether the sender asked for `TLS-Required: No` (RFC 8689 §4.1). After EHLO, `wire_body`
decides what goes out (see docs/operations.md, "SMTPUTF8 and 8-bit mail to older servers"):

1. the stored message unchanged, when the next hop can take it as it is: it offers SMTPUTF8 or
   the message needs none (RFC 6531 §3.2), and offers 8BITMIME or the message is 7-bit;
2. a message that was sent with SMTPUTF8 and has UTF-8 in its header section, to a hop without
   SMTPUTF8: the header section downgraded per RFC 2047 (downgrade.py) when that is lossless,
   else refused with 553 5.6.7 (RFC 6531 §3.2: never sent raw); the body after the header
   section still streams from its file (`SplicedBody`);
3. an 8-bit message to a hop without 8BITMIME: converted to 7-bit MIME (quoted-printable or
   base64, RFC 6152 §3) when it is MIME and at most CONVERT_LIMIT octets, else 554 5.6.3.
A rewritten copy lives only for this attempt; the stored message is never changed.
A DKIM signature we made at intake covers the original: a rewrite breaks it (docs).

Must not import anything of hato but model, smtp and delivery.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hato.delivery.downgrade import downgrade_header, to_seven_bit
from hato.delivery.smtp_client import BodySource, BytesBody, Capabilities, body_from_message
from hato.model import QueuedMessage, Reply
from hato.model.header import header_section

HEAD_LIMIT = 256 * 1024  # octets of a message read to find its header section
CONVERT_LIMIT = 10 * 1024 * 1024  # the largest message converted to 7 bit in memory
READ_CHUNK = 64 * 1024

# RFC 6531 §3.2 / RFC 5248: X.6.7 "non-ASCII addresses not permitted" (UTF-8 headers too).
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Message needs SMTPUTF8 and the server lacks it")
# RFC 6152 §3 / RFC 3463 X.6.3 "conversion required but not supported".
NEEDS_8BITMIME = Reply(554, "5.6.3", "Message has 8-bit data and the server lacks 8BITMIME")

# RFC 8689 §3: TLS-Required: No (the only value defined); case-insensitive field name.
_TLS_REQUIRED_NO = re.compile(rb"(?im)^TLS-Required[ \t]*:[ \t]*No[ \t]*\r?$")


def _read_file(path: str, limit: int, whole: bool) -> bytes:
    with open(path, "rb") as f:
        if whole:
            return f.read(limit + 1)
        buf = bytearray()
        while b"\r\n\r\n" not in buf and len(buf) < limit:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            buf += chunk
        return bytes(buf)


async def _read(message: QueuedMessage, limit: int, *, whole: bool) -> bytes:
    if message.body is not None:
        return message.prefix + message.body[: limit + 1]
    data = await asyncio.to_thread(_read_file, message.body_path, limit, whole)
    return message.prefix + data


def has_utf8_header(message: bytes) -> bool:
    """RFC 6532 §3: the header section has UTF-8 (valid UTF-8 that is not ASCII); legacy
    8-bit bytes in another charset do not count."""
    head = header_section(message)
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def read_head(message: QueuedMessage) -> bytes:
    """The prefix and the body's header section (bounded by HEAD_LIMIT).

    Raises OSError when the body file cannot be read."""
    return header_section(await _read(message, HEAD_LIMIT, whole=False))


def tls_required_no(head: bytes) -> bool:
    """RFC 8689 §4.1: the message carries `TLS-Required: No` (only meaningful without the
    REQUIRETLS parameter, which takes precedence)."""
    return _TLS_REQUIRED_NO.search(head) is not None


def needs_smtputf8(message: QueuedMessage, head: bytes) -> bool:
    """RFC 6531 §3.4: sent with SMTPUTF8, and UTF-8 is in the header section (what the client
    declared is kept; a message with an all-ASCII header section needs no SMTPUTF8)."""
    return "SMTPUTF8" in message.params and not head.isascii()


@dataclass(frozen=True, slots=True)
class SplicedBody:
    """A new header section, then the stored body file from `offset` on (`rest` octets)."""

    head: bytes
    path: str
    offset: int
    rest: int
    eight_bit: bool | None = None

    @property
    def size(self) -> int:
        return len(self.head) + self.rest

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.head
        handle = await asyncio.to_thread(open, self.path, "rb")
        try:
            await asyncio.to_thread(handle.seek, self.offset)
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
                yield chunk
        finally:
            handle.close()


def _peek(path: str, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(2)


async def _downgraded(message: QueuedMessage, head: bytes) -> BodySource | Reply:
    """Step 2 for a next hop with 8BITMIME: the new header section, the rest as stored."""
    new_head = downgrade_header(head)
    if new_head is None:
        return NEEDS_SMTPUTF8
    offset = len(head) - len(message.prefix)  # where the body file goes on after its header
    if message.body is not None:
        rest = message.body[offset:]
    else:
        rest = await asyncio.to_thread(_peek, message.body_path, offset)
    if rest and not rest.startswith(b"\r\n"):
        return NEEDS_SMTPUTF8  # a header section beyond HEAD_LIMIT: not all of it was seen
    if message.body is not None:
        return BytesBody(new_head + rest)
    return SplicedBody(new_head, message.body_path, offset, message.size - offset)


async def wire_body(message: QueuedMessage, head: bytes, caps: Capabilities) -> BodySource | Reply:
    """What to send to a next hop with these capabilities (see the module docstring), or the
    reply that refuses the message for that hop. Raises OSError when the body cannot be read."""
    stored = body_from_message(message)
    utf8_head = needs_smtputf8(message, head)
    if (caps.smtputf8 or not utf8_head) and caps.eight_bit_mime:
        return stored  # step 1 (the client declares BODY=8BITMIME unless known 7-bit)
    if utf8_head and caps.eight_bit_mime:
        # Step 2: RFC 6531 §3.2: never UTF-8 headers to a server without SMTPUTF8.
        return await _downgraded(message, head)
    full = len(message.prefix) + message.size
    if not utf8_head and full > CONVERT_LIMIT:
        return stored  # too large to convert: the client's scan refuses an 8-bit octet
    whole = await _read(message, CONVERT_LIMIT, whole=True)
    if len(whole) > CONVERT_LIMIT:
        return NEEDS_SMTPUTF8 if utf8_head else stored
    data = whole
    if utf8_head and not caps.smtputf8:
        # Step 2: RFC 6531 §3.2: never UTF-8 headers to a server without SMTPUTF8.
        downgraded = downgrade_header(header_section(data))
        if downgraded is None:
            return NEEDS_SMTPUTF8
        data = downgraded + data[len(header_section(data)) :]
    if not caps.eight_bit_mime and not data.isascii():
        # Step 3: RFC 6152 §3: no 8-bit octet to a server without 8BITMIME.
        converted = to_seven_bit(data)
        if converted is None:
            return NEEDS_8BITMIME
        data = converted
    return BytesBody(data, eight_bit=not data.isascii())
