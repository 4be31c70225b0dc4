"""The header section of a message as it streams in: whole, or the message is refused.

Theory of operation. Every check that reads the header section (the sender-login binding of
From, Sender and Resent-* on submission, the removal of forged Authentication-Results, DMARC's
From on mx) must judge all of it: a verdict on a truncated section is a verdict on a message
nobody will read, while the reader sees the fields past the cut. So the section is kept up to
MAX_HEADER_BYTES and a longer one refuses the message (552 5.3.4, every role), never a cut.
Fields are split by the one lenient splitter of `hato.model.header` that the DKIM signer and
the Authentication-Results filter use too, so a check and a reader never disagree on a field.

`HeaderFilter` is the one step every door's octets pass through on their way to the body
(intake/incoming.py for SMTP, server/localsubmit.py for hato-sendmail and the maildrop) and to
the capture the DKIM signer, the inbound checks and the ARC sealer read: it removes the fields
no client may give us (Return-Path, Content-Length, Bcc, Resent-Bcc, as Postfix's cleanup does)
and the Authentication-Results claiming our authserv-id, so every later step, every stored copy
and the signature see the same message. Checks of what the client sent (`HeaderCapture`, the
loop count, a bare CR or LF) read the octets as they came.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hato.authcheck import find_forged, without_fields
from hato.model import Address, AddressError, Reply
from hato.model.header import (
    HeaderField,
    field_addresses,
    malformed_lines,
    named,
    split_header_fields,
)
from hato.policy import MAX_ORIGINATOR_FIELDS, Accept, HeaderFacts, header_decision

# Exchange Online's limit too; Postfix keeps 100 KiB (header_size_limit) and cuts the rest.
MAX_HEADER_BYTES = 256 * 1024
# RFC 3463 §3.4 X.3.4: message too big for system (of the header section, RFC 5322 §2.1).
HEADER_TOO_LARGE = Reply(
    552, "5.3.4", f"Message refused: header section larger than {MAX_HEADER_BYTES // 1024} KiB"
)
# Header fields per message (lines that do not continue a field, RFC 5322 §2.2.3). RFC 5322
# §3.6 sets no maximum; each field costs every check that reads the section (split, DKIM and
# ARC canonicalization, DMARC's From search): 60,000 4-octet fields within the 256 KiB cost
# ~250 ms CPU at the inbound checks (docs/security.md). Real mail carries tens to a few
# hundred (a long relay path: Postfix stops at 50 Received, hopcount_limit). The default of
# [limits] max_header_fields.
MAX_HEADER_FIELDS = 1000
_FIELD_START = re.compile(rb"\n(?![ \t])")  # a line that starts a new field (or ends them)
# RFC 5322 §3.6.2, §3.6.6: the originator fields a reader shows as who sent the message.
_SENDER_FIELDS = (b"Sender", b"Resent-From", b"Resent-Sender")


@dataclass(frozen=True, slots=True)
class HeaderVerdict:
    authors: tuple[Address | None, ...]  # of every From field; None for one that is no address
    refusal: Reply | None = None
    reason: str = ""  # for the log


# The verdict of every header section on mx, made once (a frozen dataclass costs a call per
# field to make; issue 15: per message on the loop).
_UNJUDGED = HeaderVerdict(())


class HeaderCapture:
    """The header section as it streams in (bounded: past MAX_HEADER_BYTES, `too_large`)."""

    __slots__ = ("_buf", "done", "too_large")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False
        self.too_large = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        start = max(0, len(self._buf) - 3)
        self._buf += data
        # RFC 5322 §2.1: the header section ends at the first empty line.
        end = self._buf.find(b"\r\n\r\n", start)
        if self._buf.startswith(b"\r\n"):
            self._buf.clear()  # no header section at all
            self.done = True
        elif end >= 0:
            del self._buf[end + 2 :]
            self.done = True
        if len(self._buf) > MAX_HEADER_BYTES:
            self._buf.clear()
            self.done = self.too_large = True

    def section(self) -> bytes:
        """The whole header section (a message without a body is all header)."""
        return bytes(self._buf)

    def authors(self, fields: list[HeaderField] | None = None) -> list[Address | None]:
        """The addresses of every From field (None for one that is no address)."""
        return authors(split_header_fields(self.section()) if fields is None else fields)

    def judge(
        self,
        user: Address | None,
        owns: Callable[[Address], bool],
        max_fields: int = MAX_HEADER_FIELDS,
    ) -> HeaderVerdict:
        """The header section's verdict: on every role its size and its number of fields (at
        most `max_fields`); after AUTH (submission) its form, one From field, and every From,
        Sender and Resent-* address owned by `user`."""
        if self.too_large:
            return HeaderVerdict((), HEADER_TOO_LARGE, "header-too-large")
        if len(_FIELD_START.findall(self._buf)) > max_fields:
            # Counted in C before any field is split or checked (every role).
            return HeaderVerdict((), too_many_fields(max_fields), "too-many-header-fields")
        if user is None:
            return _UNJUDGED  # mx: DMARC judges the From fields (inbound.py)
        fields = split_header_fields(self.section())
        originators = len(named(fields, b"From", *_SENDER_FIELDS))
        if originators > MAX_ORIGINATOR_FIELDS:
            # Refused before any address is parsed or looked up (policy/relay.py).
            facts = HeaderFacts(originator_fields=originators)
            decision = header_decision(facts)
            assert not isinstance(decision, Accept)
            return HeaderVerdict((), decision.reply, facts.problem)
        authors = tuple(self.authors(fields))
        malformed = malformed_lines(self.section())
        facts = HeaderFacts(
            malformed_line=malformed[0] if malformed else 0,
            unowned_field=_first_unowned(fields, owns),
            from_fields=len(named(fields, b"From")),
        )
        decision = header_decision(facts)
        if isinstance(decision, Accept):
            return HeaderVerdict(authors)
        return HeaderVerdict(authors, decision.reply, facts.problem)


def too_many_fields(limit: int) -> Reply:
    # RFC 3463 §3.6 X.6.0: other or undefined media error (the header section's form).
    return Reply(552, "5.6.0", f"Message refused: more than {limit} header fields")


def authors(fields: list[HeaderField]) -> list[Address | None]:
    """The addresses of every From field of `fields` (RFC 5322 §3.6.2: every author, group
    members too), in order; None for one that is no address."""
    return [_address(text) for text in field_addresses(named(fields, b"From"))]


def _first_unowned(fields: list[HeaderField], owns: Callable[[Address], bool]) -> str:
    """The name of the first From, Sender or Resent-* field with an address `owns` denies
    (RFC 5322 §3.6.2: every author counts, group members too), or ""."""
    for field in named(fields, b"From", *_SENDER_FIELDS):
        for text in field_addresses([field]):
            address = _address(text)
            if address is None or not owns(address):
                return _display_name(field.name)
    return ""


def _address(text: str) -> Address | None:
    try:
        return Address.parse(text) if text else None
    except AddressError:
        return None


def _display_name(name: bytes) -> str:
    # For the reply text: "Resent-From", whatever case the client wrote.
    for known in (b"From", *_SENDER_FIELDS):
        if name.lower() == known.lower():
            return known.decode()
    return name.decode("ascii", "replace")


# RFC 5321 §4.4: Return-Path is added by the final delivery, a client should not send one and a
# relay or final MTA may remove it; RFC 5322 §3.6.3: Bcc (and Resent-Bcc, §3.6.6) may be
# removed before the message goes on; Content-Length is no field of RFC 5322 and a reader that
# believes it cuts the message wrong. Postfix's cleanup removes the same four by default
# (message_drop_headers), from every message, whatever the door.
DROPPED_FIELDS = frozenset({b"return-path", b"content-length", b"bcc", b"resent-bcc"})
_DROP_HINTS = (b"return-path", b"content-length", b"bcc")  # substrings of the names above


def fields_to_drop(header_block: bytes) -> list[HeaderField]:
    """The fields of `header_block` named in DROPPED_FIELDS (names compare without regard to
    case, RFC 5322 §1.2.2; WSP before the colon counts, §4.5)."""
    lowered = header_block.lower()
    if not any(hint in lowered for hint in _DROP_HINTS):
        return []  # most messages: the section need not be split into fields
    return [f for f in split_header_fields(header_block) if f.name.lower() in DROPPED_FIELDS]


# A field to add when the header section has none of that name: (lower-case name, the line).
MissingField = tuple[bytes, bytes]


def origin_fields(hostname: str, date: str, token: str) -> tuple[MissingField, ...]:
    """The Date and Message-ID a message submitted without them gets (RFC 6409 §8.2: the MSA
    MAY add Date; §8.3: it SHOULD add Message-ID; RFC 5322 §3.6: a message needs an
    orig-date field, and SHOULD have a Message-ID). `token` makes the id unique."""
    return (
        (b"date", f"Date: {date}\r\n".encode()),
        (b"message-id", f"Message-ID: <{token}@{hostname}>\r\n".encode()),
    )


def completed(block: bytes, fields: tuple[MissingField, ...]) -> bytes:
    """`block` (a header section up to and with the CRLF of its last field) with every field
    of `fields` it has none of appended (names compare without regard to case, RFC 5322
    §1.2.2). A block not ending with CRLF (a message that is all header, sent without its
    last CRLF) is left as it is."""
    if not block.endswith(b"\r\n"):
        return block
    present = {f.name.strip(b" \t").lower() for f in split_header_fields(block)}
    return block + b"".join(line for name, line in fields if name not in present)


class HeaderFilter:
    """Holds back the header section as it streams in, then lets it through without the fields
    no client may give us (DROPPED_FIELDS) and, with an `authserv_id`, without any
    Authentication-Results field claiming it (RFC 8601 §5: a border MTA removes those before
    adding its own); with `missing`, each of those fields the section lacks is added at its
    end (submission: origin_fields). Bounded: past MAX_HEADER_BYTES it passes everything on,
    and the session refuses the message (HeaderCapture.too_large), so nothing it missed is
    kept."""

    __slots__ = ("_authserv_id", "_buf", "_missing", "dropped", "passing", "removed")

    def __init__(self, authserv_id: str = "", missing: tuple[MissingField, ...] = ()) -> None:
        self._authserv_id = authserv_id
        self._missing = missing
        self._buf = bytearray()
        self.passing = False  # the header section has gone: the rest passes as it is
        self.removed = 0  # forged Authentication-Results fields
        self.dropped = 0  # DROPPED_FIELDS fields

    def feed(self, data: bytes) -> bytes:
        """The bytes to store now (b"" while the header section is still coming)."""
        if self.passing:
            return data
        start = max(0, len(self._buf) - 3)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", start)
        if self._buf.startswith(b"\r\n"):
            end = -2  # no header section
        if end == -1 and len(self._buf) < MAX_HEADER_BYTES:
            return b""
        return self._release(end)

    def finish(self) -> bytes:
        """What is still held at the end of the message (a message that is all headers)."""
        if self.passing:
            return b""
        # All of it is header section, its last line maybe without its CRLF.
        return self._release(len(self._buf) - 2 if self._buf else -1)

    def _release(self, end: int) -> bytes:
        self.passing = True
        data = bytes(self._buf)
        self._buf.clear()
        if end < 0:
            return data
        block, rest = data[: end + 2], data[end + 2 :]
        forged = find_forged(block, self._authserv_id) if self._authserv_id else ()
        dropped = fields_to_drop(block)
        self.removed, self.dropped = len(forged), len(dropped)
        if forged or dropped:
            block = without_fields(block, [*forged, *dropped])
        if self._missing:
            block = completed(block, self._missing)
        return block + rest
