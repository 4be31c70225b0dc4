"""The header section of a message (RFC 5322 §2.2), split into fields the one way every check,
the Authentication-Results filter and the DKIM signer use.

Theory of operation. Readers disagree about a malformed header section: Python's compat32
parser stops at the first line that is not a field and skips lines starting "From ", while
Dovecot, mail clients and DKIM verifiers read on and take whatever stands before the first
colon as the field name. When the check and the reader disagree, a From: the check never saw
is the one the reader shows. So there is one splitter here, as lenient as the most lenient
reader: the name is the text before the first colon with white space around it stripped
(RFC 5322 §4.5 obs-optional allows WSP before the colon, so `From : x` is a From field); a
line without a colon is a field of its own with an empty value; a line starting with WSP
continues the field above (folding, §2.2.3). `malformed_lines` names the lines a strict
reader would refuse (§3.6.8: field-name = 1*ftext), for the submission server to refuse.

Must not import anything of hato.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

# RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126 (printable ASCII but ":");
# §4.5 (obs-optional): WSP may stand between the name and the colon.
_FIELD_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 5322 §2.1.1 lines are at most 998 octets, but folding lets a field run on for the whole
# header section, and the address parser's time grows with it (seconds for 256 KiB, and then a
# look-up per address); a From with its display names fits in a fraction of this.
MAX_ADDRESS_FIELD = 4096


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as it stands in a header block: `raw` is the name, colon, value and
    line ends (continuation lines included); `start`/`end` are its offsets in the block."""

    name: bytes
    raw: bytes
    start: int
    end: int

    @property
    def value(self) -> bytes:
        return self.raw.split(b":", 1)[1] if b":" in self.raw else b""

    def is_named(self, name: bytes) -> bool:
        """RFC 5322 §1.2.2: field names compare without regard to case."""
        return self.name.lower() == name.lower()

    def text(self) -> str:
        """The value unfolded (RFC 5322 §2.2.3), UTF-8 (RFC 6532 §3.2) with anything that is
        not replaced, so it can never be mistaken for an address."""
        return _FOLD.sub("", self.value.decode("utf-8", "replace")).strip("\r\n")


def header_section(data: bytes) -> bytes:
    """The header lines of a message (CRLF-terminated, without the empty line after them)."""
    if data.startswith(b"\r\n"):
        return b""  # RFC 5322 §2.1: no header fields at all
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    # No body: the whole text, cut to its last complete line.
    last = data.rfind(b"\r\n")
    return data[: last + 2] if last >= 0 else b""


def split_header_fields(header_block: bytes) -> list[HeaderField]:
    """The fields of a header block, in order; stops at the empty line that ends it.

    Linear in the block: a field's `raw` is one slice of it, taken once its last line is
    known (appending each continuation line to the field so far copied the field again per
    line: a 250 KiB field folded every 4 octets cost half a second of CPU)."""
    fields: list[HeaderField] = []
    name = b""
    start = end = -1  # the field being read: header_block[start:end]
    for line in header_block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and start >= 0:
            # RFC 5322 §2.2.3: a line starting with WSP continues the field above (folding).
            end += len(line)
            continue
        if start >= 0:
            fields.append(HeaderField(name, header_block[start:end], start, end))
        name = line.split(b":", 1)[0].strip(b" \t") if b":" in line else line.strip()
        start = end = max(end, 0)
        end += len(line)
    if start >= 0:
        fields.append(HeaderField(name, header_block[start:end], start, end))
    return fields


def malformed_lines(header_block: bytes) -> list[int]:
    """The numbers (from 1) of the lines that are neither a header field nor the continuation
    of one (RFC 5322 §2.2, §3.6.8): no colon, an empty name, a name with white space, control
    characters or 8-bit bytes in it, or a continuation line with no field above it."""
    bad: list[int] = []
    for number, line in enumerate(header_block.splitlines(keepends=True), start=1):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                bad.append(number)
        elif not _FIELD_LINE.match(line):
            bad.append(number)
    return bad


def field_addresses(fields: Iterable[HeaderField]) -> list[str]:
    """The addr-specs of address fields (RFC 5322 §3.4), every group member included; "" for
    an entry that has none (which no one owns), and for a field nested too deep to read or
    longer than MAX_ADDRESS_FIELD."""
    addresses: list[str] = []
    for field in fields:
        text = field.text()
        if len(text) > MAX_ADDRESS_FIELD:
            addresses.append("")  # not parsed: no address of anyone's
            continue
        try:
            addresses.extend(address for _name, address in getaddresses([text]))
        except RecursionError:
            # RFC 5322 §3.2.2: comments nest, and the parser recurses once per level (a few
            # hundred "(" are enough): what it cannot read names no address of anyone's.
            addresses.append("")
    return addresses


def named(fields: Sequence[HeaderField], *names: bytes) -> list[HeaderField]:
    """The fields with one of these names, in order."""
    wanted = {name.lower() for name in names}
    return [field for field in fields if field.name.lower() in wanted]
