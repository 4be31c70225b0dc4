"""Framing a message body for the wire: DATA dot-stuffing and BDAT chunks (client side).

Theory of operation: a body arrives in chunks of any size. `LineEndings` first turns every
bare CR and bare LF into CRLF (RFC 5321 §2.3.8: a bare LF must never reach a peer, it is the
SMTP smuggling vector), holding back a trailing CR until the next chunk shows whether an LF
follows. After that a CRLF is never split between two outputs, so `DotStuffer` can stuff with
one bytes.replace per chunk plus one bit of state ("the output so far ends a line").

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

CRLF = b"\r\n"
END_OF_DATA = b".\r\n"  # RFC 5321 §4.1.1.4: CRLF "." CRLF ends DATA


class LineEndings:
    """Streaming bare CR / bare LF -> CRLF normalisation."""

    __slots__ = ("_cr",)

    def __init__(self) -> None:
        self._cr = False  # the previous chunk ended with a CR that was held back

    def feed(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._cr else chunk
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        return _normalise(data)

    def finish(self) -> bytes:
        """Whatever is held back: a final bare CR becomes CRLF."""
        held, self._cr = self._cr, False
        return CRLF if held else b""


def _normalise(data: bytes) -> bytes:
    if b"\r" not in data and b"\n" not in data:
        return data
    # CRLF -> LF, lone CR -> LF, then every LF -> CRLF: no bare CR or LF survives.
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


class DotStuffer:
    """RFC 5321 §4.5.2: the client doubles a "." at the start of every line.

    `feed()` chunks, then `finish()` for the end: a body that does not end with CRLF gets one
    (the terminator must follow a CRLF), then ".\\r\\n". Bare CR/LF are normalised to CRLF.
    """

    __slots__ = ("_at_line_start", "_endings", "_sent", "eight_bit", "size")

    def __init__(self) -> None:
        self._endings = LineEndings()
        self._at_line_start = True
        self._sent = False
        self.size = 0  # content octets before stuffing (after line-ending normalisation)
        self.eight_bit = False  # an octet over 127 was seen

    def feed(self, chunk: bytes) -> bytes:
        if not self.eight_bit and not chunk.isascii():
            self.eight_bit = True
        return self._stuff(self._endings.feed(chunk))

    def finish(self) -> bytes:
        tail = self._stuff(self._endings.finish())
        if self._sent and not self._at_line_start:
            # RFC 5321 §4.1.1.4: the body must end with CRLF before the final ".".
            tail += CRLF
            self.size += 2
        return tail + END_OF_DATA

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        self.size += len(data)
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and data.startswith(b"."):
            stuffed = b"." + stuffed
        self._at_line_start = data.endswith(b"\n")
        self._sent = True
        return stuffed


class BdatFramer:
    """RFC 3030 §2: "BDAT" SP chunk-size [SP "LAST"] CRLF, then exactly that many octets.

    The content is sent as is (no stuffing), but bare CR/LF are still normalised to CRLF, and
    the chunk size counts the octets after that, so a held-back CR moves to the next chunk.
    """

    __slots__ = ("_endings", "eight_bit", "size")

    def __init__(self) -> None:
        self._endings = LineEndings()
        self.size = 0
        self.eight_bit = False

    def chunk(self, data: bytes) -> bytes:
        """A non-LAST chunk (b"" when the normalised data is empty: nothing to send)."""
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        body = self._endings.feed(data)
        if not body:
            return b""
        self.size += len(body)
        return b"BDAT %d\r\n" % len(body) + body

    def last(self, data: bytes = b"") -> bytes:
        """The LAST chunk (it may be empty: RFC 3030 §2 "BDAT 0 LAST")."""
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        body = self._endings.feed(data) + self._endings.finish()
        self.size += len(body)
        return b"BDAT %d LAST\r\n" % len(body) + body
