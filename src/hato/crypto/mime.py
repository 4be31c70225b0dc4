"""Message header handling for encryption: split a message, tell whether it is already
encrypted, and build the header-protected inner part and the outer header (RFC 9788).

Works on bytes, never re-serializes what it keeps: field lines are copied as they were.

Must not import anything of hato but model.
"""

from __future__ import annotations

import email.message
import email.policy
import re
from dataclasses import dataclass

# RFC 9788 §4.2 (hcp_baseline obscures the Subject); the brief asks for "...".
OBSCURED_SUBJECT = b"..."

# What stays on the outer header: trace fields added in transit (RFC 5321 §4.4 says they must
# not be removed), what mail clients need to list and thread a message, and MIME structure.
_TRACE = frozenset(
    {b"return-path", b"received", b"delivered-to", b"x-original-to", b"authentication-results"}
)
_KEPT = frozenset(
    {b"from", b"to", b"cc", b"date", b"message-id", b"in-reply-to", b"references", b"reply-to"}
)
# MIME structure of the original; the outer one gets its own (RFC 2045 §3, RFC 9788 §2.1).
_MIME = frozenset({b"mime-version", b"content-type", b"content-transfer-encoding"})

_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True, slots=True)
class Field:
    """One header field as it was: `raw` holds its folded lines with their line ends."""

    name: bytes  # lower-case
    raw: bytes

    @property
    def value(self) -> str:
        text = self.raw.split(b":", 1)[1].decode("utf-8", "replace")
        return re.sub(r"\r?\n[ \t]", " ", text).strip()


@dataclass(frozen=True, slots=True)
class Parsed:
    fields: tuple[Field, ...]
    body: bytes  # after the empty line
    eol: bytes  # b"\r\n" or b"\n", as the message uses


def split_message(message: bytes) -> Parsed:
    """The header fields and body (RFC 5322 §2.1: header, empty line, body)."""
    eol = b"\r\n" if b"\r\n" in message[:4096] or not message else b"\n"
    lines = message.splitlines(keepends=True)
    fields: list[list[bytes]] = []
    index = 0
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            index += 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # RFC 5322 §2.2.3: a folded continuation line
            continue
        if not _FIELD_NAME.match(line):
            break  # not a header field: the body starts here (there was no empty line)
        fields.append([line])
    else:
        index = len(lines)
    parsed = tuple(
        Field(_FIELD_NAME.match(group[0]).group(1).lower(), b"".join(group))  # type: ignore[union-attr]
        for group in fields
    )
    return Parsed(parsed, b"".join(lines[index:]), eol)


def _content_type(fields: tuple[Field, ...]) -> email.message.Message:
    holder = email.message.Message(policy=email.policy.compat32)
    for field in fields:
        if field.name == b"content-type":
            holder["Content-Type"] = field.value
            break
    return holder


def is_encrypted(parsed: Parsed) -> bool:
    """Whether the message is already encrypted end to end, so that it is stored as it is."""
    decided = encrypted_type(parsed)
    return decided if decided is not None else is_inline_pgp(parsed.body, parsed.body)


def encrypted_type(parsed: Parsed) -> bool | None:
    """What the Content-Type says about encryption; None for text/*, where the body decides
    (`is_inline_pgp`)."""
    holder = _content_type(parsed.fields)
    ctype = holder.get_content_type()
    if ctype == "multipart/encrypted":  # RFC 1847 §2.2, RFC 3156 §4 (PGP/MIME)
        return True
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        # RFC 8551 §3.2.2: smime-type says enveloped-data / authEnveloped-data; without it,
        # an opaque .p7m is taken as encrypted (the common case for old clients).
        smime_type = str(holder.get_param("smime-type", "") or "").lower()
        return smime_type in ("", "enveloped-data", "authenveloped-data")
    if ctype.startswith("text/"):
        return None
    return False


def is_inline_pgp(start: bytes, end: bytes) -> bool:
    """RFC 4880 §6.2 inline PGP: the whole body is one armored PGP MESSAGE (`start`: the
    body's beginning, `end`: its end)."""
    return start.lstrip().startswith(b"-----BEGIN PGP MESSAGE-----") and end.rstrip().endswith(
        b"-----END PGP MESSAGE-----"
    )


def to_crlf(data: bytes) -> bytes:
    """RFC 3156 §3 / RFC 8551 §3.1.1: what is encrypted is canonical MIME, CRLF line ends."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def inner_part(parsed: Parsed, outer: list[Field]) -> bytes:
    """The cryptographic payload (RFC 9788 §2.1): every original header field, the Content-Type
    marked hp="cipher", and one HP-Outer field per non-trace field left visible outside."""
    eol = parsed.eol
    # RFC 9788 §2.2: "HP-Outer: Name: value" repeats each field the outer header shows.
    hp_outer = [b"HP-Outer: " + f.raw for f in outer if f.name not in _TRACE]
    out = list(hp_outer)
    have_ctype = False
    for field in parsed.fields:
        if field.name == b"content-type":
            # RFC 9788 §2.1.1: hp="cipher" says the header was protected by encryption.
            out.append(field.raw.rstrip(b"\r\n") + b";" + eol + b' hp="cipher"' + eol)
            have_ctype = True
        else:
            out.append(field.raw)
    if not have_ctype:
        # RFC 2045 §5.2: no Content-Type means text/plain; charset=us-ascii.
        out.append(b'Content-Type: text/plain; charset="us-ascii"; hp="cipher"' + eol)
    return to_crlf(b"".join(out) + eol + parsed.body)


def outer_fields(parsed: Parsed) -> list[Field]:
    """The fields the outer message keeps, with the Subject obscured (RFC 9788 §4.2)."""
    kept: list[Field] = []
    eol = parsed.eol
    for field in parsed.fields:
        if field.name in _TRACE or field.name in _KEPT:
            kept.append(field)
    kept.append(Field(b"subject", b"Subject: " + OBSCURED_SUBJECT + eol))
    return kept
