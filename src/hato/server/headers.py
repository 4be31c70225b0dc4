"""The header section of a message as it streams in, kept only as far as policy needs it
(the From: check of sender-login binding). Bounded: a header section larger than the cap is
judged on what fits."""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32

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
