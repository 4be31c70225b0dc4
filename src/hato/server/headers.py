"""The header section of a message as it streams in, kept only as far as policy needs it
(the From: check of sender-login binding). Bounded: a header section larger than the cap is
judged on what fits."""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32

from hato.authcheck import find_forged, without_fields
from hato.model import Address, AddressError

MAX_HEADER_BYTES = 256 * 1024


class HeaderCapture:
    __slots__ = ("_buf", "done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        start = max(0, len(self._buf) - 3)
        self._buf += data
        # RFC 5322 §2.1: the header section ends at the first empty line.
        end = self._buf.find(b"\r\n\r\n", start)
        if end >= 0:
            del self._buf[end + 2 :]
            self.done = True
        elif self._buf.startswith(b"\r\n"):
            self._buf.clear()  # no header section at all
            self.done = True
        elif len(self._buf) >= MAX_HEADER_BYTES:
            del self._buf[MAX_HEADER_BYTES:]
            self.done = True

    def from_addresses(self) -> list[Address | None]:
        """The addresses of every From: field (RFC 5322 §3.6.2); None for one that does not
        parse as an address (which no one owns)."""
        headers = BytesHeaderParser(policy=compat32).parsebytes(bytes(self._buf))
        values = [str(v) for v in headers.get_all("From", [])]
        out: list[Address | None] = []
        for _name, addr in email.utils.getaddresses(values):
            try:
                out.append(Address.parse(addr) if addr else None)
            except AddressError:
                out.append(None)
        return out


class ForgedResultsFilter:
    """Holds back the header section as it streams in, then lets it through without any
    Authentication-Results field claiming our authserv-id (RFC 8601 §5: a border MTA removes
    those before adding its own). Bounded: past MAX_HEADER_BYTES it passes everything on."""

    __slots__ = ("_authserv_id", "_buf", "_passing", "removed")

    def __init__(self, authserv_id: str) -> None:
        self._authserv_id = authserv_id
        self._buf = bytearray()
        self._passing = False
        self.removed = 0

    def feed(self, data: bytes) -> bytes:
        """The bytes to store now (b"" while the header section is still coming)."""
        if self._passing:
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
        if self._passing:
            return b""
        return self._release(len(self._buf) - 2 if self._buf.endswith(b"\r\n") else -1)

    def _release(self, end: int) -> bytes:
        self._passing = True
        data = bytes(self._buf)
        self._buf.clear()
        if end < 0:
            return data
        block, rest = data[: end + 2], data[end + 2 :]
        forged = find_forged(block, self._authserv_id)
        self.removed = len(forged)
        return (without_fields(block, forged) if forged else block) + rest
