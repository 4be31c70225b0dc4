"""Framing of the SMTP input stream: command lines, the DATA body, BDAT chunks.

Everything here scans whole buffers with bytes.find/rfind/count/replace (C speed); nothing
walks the input byte by byte or line by line in Python.

The buffer convention (kept by server.py): `buf[pos - 2:pos]` are the last two bytes already
consumed (b"\\r\\n" at the start and after every command line), so a DATA body scanned from
`pos` sees the CRLF of the DATA line in front of it: "CRLF.CRLF" then also finds a
".CRLF" first line, and `replace(b"\\r\\n.", b"\\r\\n")` unstuffs the first line too.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import enum

from hato.model import Reply
from hato.smtp import replies as R

CR = 0x0D
LF = 0x0A
END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4: the body ends only with CRLF "." CRLF
DOT_LINE = b"\r\n."  # RFC 5321 §4.5.2: a line that begins with a dot (stuffed, or the end)


class LineStatus(enum.Enum):
    NEED_MORE = "need-more"
    BARE = "bare"  # a CR not followed by LF, or an LF not preceded by CR
    TOO_LONG = "too-long"


def find_line(buf: bytes, pos: int, limit: int) -> int | LineStatus:
    """Index of the LF ending the line at `pos`, or why there is none.

    `limit` counts octets including CRLF (RFC 5321 §4.5.3.1.4). The verdict depends only on
    the bytes, never on how they were split into reads: a bare CR/LF inside the first
    `limit` octets wins over "too long".
    """
    nl = buf.find(b"\n", pos, pos + limit)
    if nl >= 0:
        # RFC 5321 §2.3.8: CRLF is the only line ending; anything else is refused.
        if nl == pos or buf[nl - 1] != CR or buf.find(b"\r", pos, nl - 1) >= 0:
            return LineStatus.BARE
        return nl
    window_end = min(len(buf), pos + limit)
    # No LF in the window: every CR before its last byte is followed by something else.
    if buf.find(b"\r", pos, window_end - 1) >= 0:
        return LineStatus.BARE
    if len(buf) - pos >= limit:
        return LineStatus.TOO_LONG
    return LineStatus.NEED_MORE


def discard_line(buf: bytes, pos: int) -> tuple[int, LineStatus | None]:
    """Skip the rest of an over-long line without keeping it.

    Returns (new pos, None) once the line's CRLF was passed, (new pos, NEED_MORE) when more
    input is needed (the last byte stays, it may be the CR of the CRLF), or BARE. The byte
    before `pos` is never a CR (find_line and this function never stop right after one).
    """
    nl = buf.find(b"\n", pos)
    if nl < 0:
        if buf.find(b"\r", pos, len(buf) - 1) >= 0:
            return pos, LineStatus.BARE
        return max(pos, len(buf) - 1), LineStatus.NEED_MORE
    if nl == pos or buf[nl - 1] != CR or buf.find(b"\r", pos, nl - 1) >= 0:
        return pos, LineStatus.BARE
    return nl + 1, None


# What one scan of the DATA body found (a plain tuple: one a read, issue 15):
# (pos: where the scan stopped consuming,
#  chunk: unstuffed content to hand on; None: nothing new, or refused,
#  ended: CRLF.CRLF was consumed,
#  bare: a bare CR or LF; the message is refused and the connection closed)
DataScan = tuple[int, bytes | None, bool, bool]


class DataScanner:
    """Scans a DATA body as it streams: end marker, bare CR/LF, line length, size.

    Theory: each scan covers the region [pos, stop) where `stop` is either just after the
    CRLF that precedes ".CRLF", or a few bytes before the end of the buffer (a partial
    end marker may be there) and never right after a CR (its LF may come next). So a
    region never splits a CRLF, and counting CR, LF and CRLF in it finds any bare one.
    """

    __slots__ = ("_line_len", "_max_line", "_max_size", "refusal", "size")

    def __init__(self, max_text_line: int, max_message_size: int) -> None:
        # A run of `max_text_line` non-LF octets (the CR counts) after an LF is a line
        # longer than max_text_line octets including CRLF; 0: no limit.
        self._max_line = max_text_line
        self._max_size = max_message_size
        self._line_len = 0  # octets of the current, unfinished line already scanned
        self.size = 0  # content octets after unstuffing
        self.refusal: Reply | None = None  # set once the message is refused (reported at end)

    def scan(self, buf: bytes, pos: int) -> DataScan:
        # One search finds the end marker and any line that begins with a dot (the marker is
        # one): in most regions there is neither, or the marker alone, and then the content is
        # the region as it is, a slice instead of a second search and a copy (issue 15).
        dotted = buf.find(DOT_LINE, pos - 2)
        if dotted < 0 or buf.startswith(END_OF_DATA, dotted):
            end, plain = dotted, True  # no line of the region begins with a dot
        else:
            end, plain = buf.find(END_OF_DATA, dotted), False
        if end >= 0:
            stop = end + 2  # RFC 5321 §4.1.1.4: the CRLF before the dot is content
            resume = end + 5
        else:
            stop = len(buf) - 4  # may hold the start of END_OF_DATA
            if stop > pos and buf[stop - 1] == CR:
                stop -= 1
            if stop <= pos:
                return pos, None, False, False
            resume = stop
        crlf = buf.count(b"\r\n", pos, stop)
        # RFC 5321 §2.3.8: a bare CR or LF in DATA is refused (SMTP smuggling).
        if buf.count(b"\r", pos, stop) != crlf or buf.count(b"\n", pos, stop) != crlf:
            return pos, None, False, True
        chunk: bytes | None = None
        if self.refusal is None:
            self._check_lines(buf, pos, stop)
        if self.refusal is None:
            chunk = buf[pos:stop] if plain else self._unstuff(buf, pos, stop)
            self.size += len(chunk)
            if self._max_size and self.size > self._max_size:
                # RFC 1870 §6.3: over the maximum size: 552, the body is not kept.
                self.refusal = R.MESSAGE_TOO_BIG
                chunk = None
        return resume, chunk or None, end >= 0, False

    def _check_lines(self, buf: bytes, pos: int, stop: int) -> None:
        # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
        if not self._max_line:
            return
        first_nl = buf.find(b"\n", pos, stop)
        if first_nl < 0:
            self._line_len += stop - pos
            too_long = self._line_len >= self._max_line
        else:
            too_long = self._line_len + first_nl - pos >= self._max_line or (
                self._has_long_line(buf, first_nl, stop)
            )
            self._line_len = stop - buf.rfind(b"\n", pos, stop) - 1
        if too_long:
            self.refusal = Reply(554, "5.6.0", f"Message line longer than {self._max_line} octets")

    def _has_long_line(self, buf: bytes, first_nl: int, stop: int) -> bool:
        """Whether an LF at or after `first_nl` is followed by max_line non-LF octets, all
        before `stop` (the regex b"\\n[^\\n]{max_line}" over buf[first_nl:stop], exactly).

        From an LF p, the last LF q within the next max_line octets (one rfind) rules out
        every LF between p and q too (q lies within their next max_line octets), so the walk
        goes on from q; none there is a match. Two steps pass at least max_line octets: at
        most 2 * len / max_line C calls, and no regex walking every line (issue 15)."""
        max_line = self._max_line
        rfind = buf.rfind
        p = first_nl
        while p + max_line < stop:
            q = rfind(b"\n", p + 1, p + max_line + 1)
            if q < 0:
                return True
            p = q
        return False

    @staticmethod
    def _unstuff(buf: bytes, pos: int, stop: int) -> bytes:
        # RFC 5321 §4.5.2: a leading "." of a line is removed. buf[pos-2:pos] is the context
        # that lets "\r\n." match across the region's start; replace() never changes bytes
        # before the dot, so dropping those two context bytes afterwards is exact.
        return buf[pos - 2 : stop].replace(b"\r\n.", b"\r\n")[2:]


class BareCounter:
    """Counts CR, LF and CRLF over a BDAT message split into any pieces (binary data has
    no line framing, so the check runs once at the end)."""

    __slots__ = ("_cr", "_crlf", "_last_cr", "_lf")

    def __init__(self) -> None:
        self._cr = self._lf = self._crlf = 0
        self._last_cr = False

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        self._cr += piece.count(b"\r")
        self._lf += piece.count(b"\n")
        self._crlf += piece.count(b"\r\n") + (1 if self._last_cr and piece[0] == LF else 0)
        self._last_cr = piece[-1] == CR

    @property
    def bare(self) -> bool:
        return self._cr != self._crlf or self._lf != self._crlf
