"""Authentication-Results (RFC 8601): building ours, finding forged ones that claim to be ours.

Theory of operation. Each check reports a `MethodResult` (method, result, reason, properties,
comment); `build_header` writes them under our authserv-id as one header field for the stored
prefix. `find_forged` looks at a received header block and names every Authentication-Results
field whose authserv-id is ours: RFC 8601 §5 says such fields, added before the message reached
us, MUST be removed (or renamed) before ours is added, since they can only be forgeries. The
caller drops them from the header block it stores; the body is never touched.

Imports: model, and the result values of the sibling checks (dkim, spf).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hato.authcheck.dkim import DkimResult
from hato.authcheck.spf import SpfResult
from hato.model import AddressError, normalize_domain
from hato.model.header import HeaderField, split_header_fields

HEADER_NAME = b"Authentication-Results"
_LOWER_NAME = HEADER_NAME.lower()
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 2045 §5.1 token
_ATEXT = r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+"
# RFC 8601 §2.2: pvalue may also be [ [ local-part ] "@" ] domain-name, written bare.
_ADDRESS = re.compile(rf"(?:{_ATEXT}(?:\.{_ATEXT})*)?@[0-9A-Za-z](?:[0-9A-Za-z.\-]*[0-9A-Za-z])?")
_FOLD_WIDTH = 76


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` entry (RFC 8601 §2.2, §2.7): e.g. dkim=pass header.d=example.com."""

    method: str
    result: str
    reason: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "example.com"), in order
    comment: str = ""

    def render(self) -> str:
        parts = [f"{self.method}={self.result}"]
        if self.comment:
            parts.append("(" + _comment_text(self.comment) + ")")
        if self.reason:
            parts.append("reason=" + _quoted(self.reason))
        for name, value in self.properties:
            if value:
                parts.append(f"{name}={_pvalue(value)}")
        return " ".join(parts)


def dkim_methods(results: Sequence[DkimResult]) -> tuple[MethodResult, ...]:
    """One entry per signature; ``dkim=none`` when the message had none (RFC 8601 §2.7.1)."""
    if not results:
        return (MethodResult("dkim", "none"),)
    return tuple(
        MethodResult(
            "dkim",
            r.status.value,
            reason=r.reason,
            # RFC 8601 §2.7.1: header.d, header.i, header.a, header.s; RFC 6008 §2: header.b.
            properties=(
                ("header.d", r.domain),
                ("header.i", r.identity),
                ("header.s", r.selector),
                ("header.a", r.algorithm),
                ("header.b", r.signature_prefix),
            ),
        )
        for r in results
    )


def spf_method(result: SpfResult, *, mailfrom: str, helo: str = "") -> MethodResult:
    """RFC 8601 §2.7.2: spf with smtp.mailfrom (the MAIL FROM checked) or, for a null
    reverse-path, smtp.helo (RFC 7208 §2.4 checks the HELO identity then)."""
    properties = (("smtp.mailfrom", mailfrom),) if mailfrom else (("smtp.helo", helo),)
    return MethodResult("spf", result.result.value, properties=properties)


def build_header(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The whole ``Authentication-Results: ...\\r\\n`` field, folded; ``none`` when no
    method ran (RFC 8601 §2.2)."""
    entries = [r.render() for r in results] or ["none"]
    lines = [f"{HEADER_NAME.decode()}: {authserv_id};"]
    for i, entry in enumerate(entries):
        text = entry + (";" if i < len(entries) - 1 else "")
        lines.extend(_fold_entry(text))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def authserv_id_of(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value, lower-case ("" if there is none).

    RFC 8601 §2.2: ``authres-header = "Authentication-Results:" [CFWS] authserv-id
    [ CFWS authres-version ] ...``; the id is a `value` (token or quoted-string)."""
    text = _strip_comments(value.decode("utf-8", "replace")).strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        return text[1:end].lower() if end > 0 else ""
    match = re.match(r"[^\s;]+", text)
    return match.group(0).lower() if match else ""


def _id_key(authserv_id: str) -> str:
    """The form authserv-ids are compared in. RFC 8601 §2.5: the id is a domain name in
    practice, so `mx.example.org.` (absolute, RFC 1034 §3.1), `MX.example.org` and its
    full-width or decomposed Unicode spellings all name the same host."""
    name = authserv_id.strip().rstrip(".")
    try:
        return normalize_domain(name)
    except AddressError:
        return name.lower()


def claims_id(value: bytes, authserv_id: str) -> bool:
    """Whether an Authentication-Results value claims `authserv_id`."""
    return _id_key(authserv_id_of(value)) == _id_key(authserv_id)


def find_forged(header_block: bytes, authserv_id: str) -> tuple[HeaderField, ...]:
    """Every Authentication-Results field that claims our authserv-id: to be dropped.

    RFC 8601 §5: a border MTA MUST remove (or rename) any Authentication-Results field that
    claims its own authserv-id before adding its own. The comparison is that of domain
    names (RFC 8601 §2.5), see `_id_key`."""
    if _LOWER_NAME not in header_block.lower():
        # No field can be named so (names compare without regard to case, RFC 5322 §1.2.2):
        # most messages, and the section need not be split into fields for them.
        return ()
    return tuple(
        f
        for f in split_header_fields(header_block)
        if f.name.lower() == HEADER_NAME.lower() and claims_id(f.value, authserv_id)
    )


def without_fields(header_block: bytes, drop: Sequence[HeaderField]) -> bytes:
    """`header_block` with the given fields cut out (everything else byte for byte)."""
    out: list[bytes] = []
    position = 0
    for field in sorted(drop, key=lambda f: f.start):
        out.append(header_block[position : field.start])
        position = field.end
    out.append(header_block[position:])
    return b"".join(out)


def resinfo_entries(value: bytes) -> tuple[str, list[str]]:
    """Split an Authentication-Results value into its authserv-id part and its entries, as
    written (comments kept): the pieces between the top-level semicolons (RFC 8601 §2.2)."""
    text = value.decode("utf-8", "replace").replace("\r\n", "").replace("\n", "")
    pieces = [p.strip() for p in _split_top_level(text, ";")]
    pieces = [p for p in pieces if p]
    if not pieces:
        return "", []
    return pieces[0], pieces[1:]


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split on `separator` outside comments (nested parentheses) and quoted strings."""
    pieces: list[str] = []
    depth, quoted, escaped, start = 0, False, False, 0
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == separator and not depth:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _strip_comments(text: str) -> str:
    out: list[str] = []
    depth, escaped = 0, False
    for char in text:
        if escaped:
            escaped = False
            continue
        if char == "\\" and depth:
            escaped = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return "".join(out)


def _pvalue(value: str) -> str:
    if _TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value):
        return value
    return _quoted(value)


def _quoted(text: str) -> str:
    if _TOKEN.fullmatch(text):
        return text
    # RFC 5322 §3.2.4 quoted-string: backslash and double quote are escaped; no line ends.
    clean = " ".join(text.split())
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_text(text: str) -> str:
    # RFC 5322 §3.2.2: parentheses and backslash inside a comment are escaped.
    clean = " ".join(text.split())
    return clean.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _fold_entry(entry: str) -> list[str]:
    """An entry on its own continuation line(s), folded at spaces to stay near 76 columns."""
    lines: list[str] = []
    line = "\t"
    for word in entry.split(" "):
        if len(line) > 1 and len(line) + 1 + len(word) > _FOLD_WIDTH:
            lines.append(line)
            line = "\t" + word
        else:
            line += (" " if len(line) > 1 else "") + word
    lines.append(line)
    return lines
