"""Rewriting a message for a next hop that lacks SMTPUTF8 or 8BITMIME: pure functions of bytes.

`downgrade_header` turns a header section with UTF-8 (RFC 6532) into US-ASCII with RFC 2047
encoded words, or answers None when that would lose anything: only unstructured fields and the
display names of address fields can carry encoded words (RFC 2047 §5); a UTF-8 address
(RFC 6531), a UTF-8 field of any other kind, or a field that does not survive the round trip
unchanged makes the message undeliverable to that hop.

`to_seven_bit` turns an 8-bit MIME message into a 7-bit one (RFC 6152 §3): each leaf part whose
body has 8-bit octets is re-encoded, quoted-printable for text and base64 for the rest
(RFC 2045 §6), and its Content-Transfer-Encoding field replaced; multiparts are walked by their
boundaries (RFC 2046 §5.1), message/rfc822 parts recursively (RFC 2046 §5.2.1). Every other
octet stays as it was. None when the message is not MIME (no charset to declare), or 8-bit
octets sit where no encoding can reach them (header fields, preambles).

Must not import anything of hato but model.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import re
from email.headerregistry import AddressHeader, BaseHeader
from email.parser import BytesHeaderParser

from hato.model.header import split_header_fields

_POLICY = email.policy.SMTP  # utf8=False: non-ASCII text becomes RFC 2047 encoded words
# RFC 5322 §3.6.5 and RFC 2045 §8: unstructured fields; encoded words allowed (RFC 2047 §5(1)).
UNSTRUCTURED = frozenset({"subject", "comments", "content-description"})
# RFC 5322 §3.6.2-3.6.6: address lists; display names are phrases (RFC 2047 §5(3)).
ADDRESSES = frozenset(
    {"from", "sender", "reply-to", "to", "cc", "bcc"}
    | {"resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc"}
)
MAX_DEPTH = 20  # nested multiparts / messages we follow
# What the standard library's header parser raises on some malformed fields instead of noting
# a defect (found by tests/property/test_downgrade_properties.py): such a field is not one we
# can rewrite without loss.
_PARSER_ERRORS = (email.errors.HeaderParseError, AttributeError, LookupError, ValueError, TypeError)


def _same(before: BaseHeader, after: BaseHeader) -> bool:
    if isinstance(before, AddressHeader) and isinstance(after, AddressHeader):
        return [(g.display_name, [(a.display_name, a.addr_spec) for a in g.addresses])
                for g in before.groups] == [
                (g.display_name, [(a.display_name, a.addr_spec) for a in g.addresses])
                for g in after.groups]  # fmt: skip
    return " ".join(str(before).split()) == " ".join(str(after).split())


def _downgrade_field(field: bytes) -> bytes | None:
    name_bytes, colon, raw = field.partition(b":")
    name = name_bytes.decode("ascii", "replace").strip()
    if not colon or name.lower() not in UNSTRUCTURED | ADDRESSES:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None  # RFC 6532 §3.2: UTF-8 only; anything else has no known charset
    # RFC 5322 §2.2.3: unfold before parsing.
    value = re.sub(r"\r\n(?=[ \t])", "", text).strip()
    try:
        parsed = _POLICY.header_factory(name, value)
        if parsed.defects:
            return None
        if isinstance(parsed, AddressHeader) and not all(
            a.addr_spec.isascii() for a in parsed.addresses
        ):
            return None  # RFC 6531: a UTF-8 address has no ASCII form
        folded = parsed.fold(policy=_POLICY)
        if not folded.isascii():
            return None
        again = _POLICY.header_factory(name, folded.partition(":")[2].strip())
        same = _same(parsed, again)
    except _PARSER_ERRORS:
        return None
    return folded.encode("ascii") if same else None


def downgrade_header(head: bytes) -> bytes | None:
    """`head` (header lines, CRLF-terminated) in US-ASCII, or None (see the module docstring)."""
    out = []
    for field in (f.raw for f in split_header_fields(head)):
        if field.isascii():
            out.append(field)
            continue
        encoded = _downgrade_field(field)
        if encoded is None:
            return None
        out.append(encoded)
    return b"".join(out)


# ---- 8BITMIME -> 7bit ----

_PARSER = BytesHeaderParser(policy=email.policy.compat32)
_CTE_FIELD = re.compile(rb"(?im)^Content-Transfer-Encoding[ \t]*:.*\r\n(?:[ \t].*\r\n)*")


def _split(entity: bytes) -> tuple[bytes, bytes]:
    if entity.startswith(b"\r\n"):
        return b"", entity[2:]
    end = entity.find(b"\r\n\r\n")
    return (entity, b"") if end < 0 else (entity[: end + 2], entity[end + 4 :])


def _qp(body: bytes) -> bytes:
    # RFC 2045 §6.7: line by line, so CRLF stays a hard line break; soft breaks are "=" CRLF.
    lines = body.split(b"\r\n")
    encoded = [binascii.b2a_qp(line, quotetabs=False).replace(b"=\n", b"=\r\n") for line in lines]
    return b"\r\n".join(encoded)


def _b64(body: bytes) -> bytes:
    # RFC 2045 §6.8: lines of at most 76 characters.
    return base64.encodebytes(body).replace(b"\n", b"\r\n")


def _leaf(head: bytes, body: bytes, maintype: str) -> bytes:
    text = maintype == "text"
    cte, data = ("quoted-printable", _qp(body)) if text else ("base64", _b64(body))
    head = _CTE_FIELD.sub(b"", head) + f"Content-Transfer-Encoding: {cte}\r\n".encode("ascii")
    return head + b"\r\n" + data


def _entity(entity: bytes, depth: int) -> bytes | None:
    head, body = _split(entity)
    if not head.isascii() or depth > MAX_DEPTH:
        return None
    if body.isascii():
        return entity
    fields = _PARSER.parsebytes(head + b"\r\n")
    ctype = fields.get_content_type()
    maintype = fields.get_content_maintype()
    if maintype == "multipart":
        boundary = fields.get_boundary()
        return None if boundary is None else _multipart(head, body, boundary, depth)
    if ctype in ("message/rfc822", "message/global"):
        inner = _entity(body, depth + 1)
        if inner is None or ctype == "message/global":
            return None  # RFC 6532 §3.7: message/global may carry UTF-8 headers: no 7-bit form
        # RFC 2046 §5.2.1: a message/rfc822 of 7-bit content is itself 7bit.
        return _CTE_FIELD.sub(b"", head) + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + inner
    if maintype == "message":
        return None  # RFC 2046 §5.2.2/§5.2.3: partial and external-body are 7bit only
    return _leaf(head, body, maintype)


def _multipart(head: bytes, body: bytes, boundary: str, depth: int) -> bytes | None:
    # RFC 2046 §5.1.1: delimiter lines are "--" boundary, the last one with "--" after it.
    delimiter = re.compile(
        rb"(?m)^--" + re.escape(boundary.encode("ascii", "replace")) + rb"(--)?[ \t]*(?:\r\n|\Z)"
    )
    pieces: list[bytes] = []
    pos, inside = 0, False
    for match in delimiter.finditer(body):
        chunk = body[pos : match.start()]
        if inside:
            # The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            part = _entity(chunk[:-2] if chunk.endswith(b"\r\n") else chunk, depth + 1)
            if part is None:
                return None
            chunk = part + (b"\r\n" if chunk.endswith(b"\r\n") else b"")
        elif not chunk.isascii():
            return None  # 8-bit preamble: nothing can encode it
        pieces.append(chunk + match.group(0))
        pos, inside = match.end(), match.group(1) is None
    rest = body[pos:]
    if inside or not rest.isascii():
        return None  # no closing delimiter, or an 8-bit epilogue
    return head + b"\r\n" + b"".join(pieces) + rest


def to_seven_bit(message: bytes) -> bytes | None:
    """`message` with every 8-bit body part re-encoded, or None (see the module docstring)."""
    head, _ = _split(message)
    if b"mime-version" not in head.lower():
        return None  # RFC 2045 §4: not MIME: no charset to name for the 8-bit text
    converted = _entity(message, 0)
    return converted if converted is not None and converted.isascii() else None
