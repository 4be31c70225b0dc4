"""Parsing the replies an SMTP/LMTP server sends to our client (RFC 5321 §4.2).

Theory of operation: `ReplyParser` buffers bytes and hands out one complete `Reply` at a time.
A reply is one or more lines with the same three-digit code; every line but the last has "-"
after the code (RFC 5321 §4.2.1). An RFC 3463 enhanced status code at the start of the text
(RFC 2034 §4) is taken into `Reply.enhanced` and removed from every line. Anything that does not
parse raises `RemoteProtocolError`: the peer is broken or hostile, and the driver turns that
into a temporary failure.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import re

from hato.model import Reply

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; we allow peers some slack.
MAX_REPLY_LINE = 4096
# A bound on one (multi-line) reply, so a peer cannot make us buffer without end.
MAX_REPLY_LINES = 200

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39
_CODE = re.compile(rb"[2-5][0-5][0-9]")
# RFC 3463 §2: status-code = class "." subject "." detail; class 2/4/5, 1-3 digit numbers.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")


class RemoteProtocolError(Exception):
    """The peer sent something that is not SMTP (a malformed or unexpected reply)."""


class ReplyParser:
    """Incremental reply parser: `feed(bytes)`, then `next_reply()` until it returns None."""

    __slots__ = ("_buf", "_lines")

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[tuple[bytes, bytes]] = []  # (code, text) of the reply being read

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished reply are buffered."""
        return bool(self._buf) or bool(self._lines)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when more bytes are needed."""
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise RemoteProtocolError("reply line too long")
                return None
            if nl + 1 > MAX_REPLY_LINE:
                raise RemoteProtocolError("reply line too long")
            # RFC 5321 §4.2 wants CRLF; a bare LF ending a *reply* is tolerated (it cannot
            # smuggle anything into a message), the CR is dropped either way.
            line = self._buf[:nl].removesuffix(b"\r")
            self._buf = self._buf[nl + 1 :]
            reply = self._take_line(line)
            if reply is not None:
                return reply

    def _take_line(self, line: bytes) -> Reply | None:
        code = line[:3]
        sep = line[3:4]
        if not _CODE.fullmatch(code) or sep not in (b"", b" ", b"-"):
            raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
        if self._lines and self._lines[0][0] != code:
            # RFC 5321 §4.2.1: every line of a multiline reply has the same code.
            raise RemoteProtocolError("reply code changed within a multiline reply")
        self._lines.append((code, line[4:]))
        if len(self._lines) > MAX_REPLY_LINES:
            raise RemoteProtocolError("multiline reply too long")
        if sep == b"-":
            return None
        lines, self._lines = self._lines, []
        return build_reply(int(code), [text for _, text in lines])


def build_reply(code: int, raw_lines: list[bytes]) -> Reply:
    """A Reply from the text of its lines (after "NNN-" / "NNN ")."""
    # RFC 6531 §3.7.4: reply text may be UTF-8; anything else is shown as U+FFFD.
    texts = [raw.decode("utf-8", errors="replace").replace("\r", "") for raw in raw_lines]
    enhanced = _enhanced(code, texts[0])
    if enhanced is not None:
        # RFC 2034 §4: the enhanced code starts the text of every line of the reply.
        texts = [_strip_code(text, enhanced) for text in texts]
    return Reply(code, enhanced, "\n".join(texts))


def _enhanced(code: int, text: str) -> str | None:
    first = text.split(" ", 1)[0]
    match = _ENHANCED.fullmatch(first)
    # RFC 3463 §3.1: the class of the enhanced code equals the first digit of the reply code.
    if match is None or int(match.group(1)) != code // 100:
        return None
    return first


def _strip_code(text: str, enhanced: str) -> str:
    if text == enhanced:
        return ""
    return text.removeprefix(enhanced + " ")
