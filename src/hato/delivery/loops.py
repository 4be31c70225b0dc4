"""Mail loops: the hop count of a message and the Delivered-To fields of its forwarders.

Theory of operation. RFC 5321 §6.3: "servers MUST contain provisions for detecting and stopping
trivial loops", by counting the trace fields a message collected. `TraceFields` reads the
header section as it streams in (any chunking, bounded memory, stopping at its end, so it never
depends on how much of the header anyone else keeps) and counts the Received: fields
(RFC 5321 §4.4) and the Delivered-To: fields (RFC 9228) as hops, like Postfix's
hopcount_limit: at `limit` hops or more (default 50) the message is a loop, refused
``554 5.4.6`` at the end of DATA, or bounced with 5.4.6 when it is already queued (local
submission, a message queued earlier). RFC 3463 §3.5 X.4.6: routing loop detected.

An alias that forwards adds ``Delivered-To: <alias>`` (RFC 9228 §4) to the copy it sends on
(`delivered_to_fields`); a message that comes back carrying that field for the same alias would
go round again (`forwards_again`): SMTP refuses it 554 5.4.6 at the end of DATA, as the hop
count (a stranger who adds the field to mail for a forwarding alias from a forged sender got
250, then a bounce to that sender of the header section it wrote: backscatter), and a queued
copy is bounced with 5.4.6, before the hop count would stop it 50 round trips later.

Must not import anything of hato but model.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterable

from hato.model import Address, QueuedMessage, Reply

DEFAULT_HOP_LIMIT = 50  # Postfix's hopcount_limit; RFC 5321 §6.3 asks for "a reasonable" one
# RFC 5321 §6.3 / RFC 3463 §3.5 X.4.6: routing loop detected.
MAIL_LOOP = Reply(554, "5.4.6", "Too many hops: mail loop detected")
FORWARD_LOOP = Reply(554, "5.4.6", "Mail loop: already forwarded by this address")

_MAX_LINE = 8 * 1024  # octets of one header line kept (a name and a Delivered-To value fit)
_MAX_DELIVERED_TO = 100  # Delivered-To values kept (the hop count stops loops long before)
_HEADER_READ = 256 * 1024  # octets of a queued body read to find its header section
_READ_CHUNK = 16 * 1024


class TraceFields:
    """Counts the hops of a header section fed in chunks (see the module docstring)."""

    __slots__ = ("_field", "_partial", "delivered_to", "done", "hops")

    def __init__(self) -> None:
        self.hops = 0
        self.delivered_to: set[str] = set()  # lower-case addresses
        self.done = False
        self._partial = b""  # the line not yet ended by LF
        self._field: bytearray | None = None  # the Delivered-To field being read

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        buf = self._partial + data
        # Only the header lines and the empty line after them are split, never the body
        # (CRLF first: a search for LF LF is slow on a CRLF text that has none).
        crlf = buf.find(b"\n\r\n")
        lf = buf.find(b"\n\n", 0, crlf if crlf >= 0 else len(buf))
        end = lf if lf >= 0 else crlf
        if end >= 0:
            buf = buf[: end + 1] + b"\n"
        lines = buf.split(b"\n")
        self._partial = lines.pop()[:_MAX_LINE]
        for line in lines:
            self._line(line.removesuffix(b"\r"))
            if self.done:
                return

    def finish(self) -> None:
        """The message ended (a header section without a body)."""
        if not self.done:
            if self._partial:
                self._line(self._partial.removesuffix(b"\r"))
            self._end_field()
            self.done = True

    def _line(self, line: bytes) -> None:
        if not line:
            # RFC 5322 §2.1: the header section ends at the first empty line.
            self._end_field()
            self.done = True
            return
        if line[:1] in (b" ", b"\t"):
            # RFC 5322 §2.2.3: a folded continuation of the field before.
            if self._field is not None and len(self._field) < _MAX_LINE:
                self._field += line
            return
        self._end_field()
        name, colon, value = line.partition(b":")
        if not colon:
            return  # not a header field (the core passed the bytes on; nothing to count)
        # RFC 5322 §4.5.3 (obsolete syntax): white space may precede the colon.
        name = name.rstrip(b" \t").lower()
        if name == b"received":
            self.hops += 1
        elif name == b"delivered-to":
            self.hops += 1
            self._field = bytearray(value[:_MAX_LINE])

    def _end_field(self) -> None:
        field, self._field = self._field, None
        if field is None or len(self.delivered_to) >= _MAX_DELIVERED_TO:
            return
        _, address = email.utils.parseaddr(bytes(field).decode("utf-8", "replace"))
        if address:
            self.delivered_to.add(address.lower())

    def loops(self, limit: int) -> bool:
        """Whether the hop count reached `limit` (0: no limit)."""
        return limit > 0 and self.hops >= limit


def is_forward(dest: Address, original: Address, is_local: Callable[[str], bool]) -> bool:
    """Whether a recipient row is an alias of ours sending the message on to another server."""
    return is_local(original.domain) and not is_local(dest.domain)


def forwards_again(
    delivered_to: set[str], dest: Address, original: Address, is_local: Callable[[str], bool]
) -> str | None:
    """The alias (lower case) when the row (deliver-to `dest`, as `original` was addressed)
    would forward a message that already carries ``Delivered-To:`` for it: a loop (RFC 9228
    §4, RFC 5321 §6.3)."""
    alias = f"{original.local}@{original.domain}".lower()
    if alias in delivered_to and is_forward(dest, original, is_local):
        return alias
    return None


def delivered_to_fields(
    recipients: Iterable[tuple[Address, Address]], is_local: Callable[[str], bool]
) -> bytes:
    """``Delivered-To:`` lines (RFC 9228 §4) for the aliases among `recipients` (deliver-to,
    original) that forward to another server; each alias once."""
    seen: dict[str, None] = {}
    for dest, original in recipients:
        if is_forward(dest, original, is_local):
            seen[f"{original.local}@{original.domain}".lower()] = None
    return b"".join(f"Delivered-To: {alias}\r\n".encode() for alias in seen)


def read_trace(message: QueuedMessage) -> TraceFields:
    """The trace fields of a queued message's own header section (our prefix not included: it
    holds this hop's fields). Blocking when the body is a file."""
    trace = TraceFields()
    if message.body is not None:
        trace.feed(message.body[:_HEADER_READ])
    else:
        with open(message.body_path, "rb") as f:
            read = 0
            while not trace.done and read < _HEADER_READ:
                chunk = f.read(_READ_CHUNK)
                if not chunk:
                    break
                read += len(chunk)
                trace.feed(chunk)
    trace.finish()
    return trace
