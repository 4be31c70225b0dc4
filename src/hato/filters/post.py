"""One HTTP/1.1 POST over a connection of its own, for rspamd's checks (rspamd.py): the request
written as the body is yielded (a message still in memory: its parts and the head in one
gathering write), the reply gathered by a protocol object until its end.

Why not aiohttp here: rspamd's normal worker closes the connection after every reply (3.4
answers `Connection: close` even to a request asking keep-alive), so no pool is ever reused,
and aiohttp's request and response machinery cost about 0.6 ms of CPU per check on our 2-CPU
benchmark machine, more than the rest of Hato's work on a message (docs/performance.md, "The
rspamd check"). Nor asyncio's streams: a StreamReader and StreamWriter per check, and a
readline per reply line, cost another ~0.15 ms; a Protocol that keeps the reply in one buffer
and looks at it once it has its end does not. This is the part of HTTP/1.1 (RFC 9112) that
exchange needs and no more: a request with a Content-Length body, `Connection: close`; a
reply whose body is delimited by Content-Length, chunked transfer coding, or the connection's
close. The caller bounds the whole exchange in time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_REPLY = 16 * 1024 * 1024  # octets of reply body we read at most
MAX_HEADER = 64 * 1024  # octets of reply header section we read at most
MAX_HEADER_LINES = 100
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\r?")
# RFC 9110 §5.5: a field value has no CR, LF or NUL (we replace other controls too).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


class HttpError(Exception):
    """The server could not be reached or its reply was not HTTP/1.1 we understand."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """host, port and path prefix of an http:// URL, or the path of a "unix:/PATH" socket
    (config checked their form)."""

    host: str
    port: int
    prefix: str
    authority: str
    socket: str | None = None  # a unix socket: no TCP connection's set-up and teardown

    @classmethod
    def of(cls, url: str) -> Endpoint:
        if url.startswith("unix:"):
            return cls("localhost", 0, "", "localhost", url.removeprefix("unix:"))
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{url}: not an http://HOST:PORT URL")
        return cls(parts.hostname, parts.port, parts.path.rstrip("/"), parts.netloc)


async def post(
    endpoint: Endpoint,
    path: str,
    headers: list[tuple[str, str]],
    size: int,
    body: AsyncIterable[bytes] | tuple[bytes, ...],
) -> tuple[int, bytes]:
    """(status, reply body) of `POST path` with the `size` octets `body` yields, or of its
    parts when it is a tuple: a message still in memory, written with the request head in
    one gathering write (writev), neither joined nor copied again."""
    loop = asyncio.get_running_loop()
    if endpoint.socket is not None:
        transport, exchange = await loop.create_unix_connection(
            lambda: _Exchange(loop), endpoint.socket
        )
    else:
        transport, exchange = await loop.create_connection(
            lambda: _Exchange(loop), endpoint.host, endpoint.port
        )
    try:
        lines = [
            f"POST {endpoint.prefix}{path} HTTP/1.1",
            f"Host: {endpoint.authority}",
            "Connection: close",
            f"Content-Length: {size}",
        ]
        for name, value in headers:  # a loop, not a generator: one frame fewer per field
            lines.append(f"{name}: {_CONTROLS.sub('?', value)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        if isinstance(body, tuple):
            transport.writelines((head, *body))
            return await exchange.reply
        first = True
        async for chunk in body:
            if exchange.reply.done():
                break  # answered (or closed) before the whole request: nothing to add
            # The head and a first chunk in one write (one segment for a small message).
            transport.write(head + chunk if first else chunk)
            first = False
            await exchange.writable()
        if first and not exchange.reply.done():
            transport.write(head)
        return await exchange.reply
    finally:
        # Done, or given up (a timeout cancels us): the connection is of no further use.
        if exchange.reply.done():
            transport.close()
        else:
            transport.abort()


class _Exchange(asyncio.Protocol):
    """One request's reply: bytes gathered in one buffer, looked at when its end may be there."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reply: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self.buffer = bytearray()
        self.body_start = -1  # past the header section, once it is complete
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self._resume: asyncio.Future[None] | None = None

    async def writable(self) -> None:
        """Until the transport's buffer is below its high-water mark again (flow control)."""
        if self._resume is not None:
            await self._resume

    def pause_writing(self) -> None:
        self._resume = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake()

    def _wake(self) -> None:
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        self._resume = None

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self.buffer += data
        try:
            if self.body_start < 0:
                self._header()
            if self.body_start >= 0 and self.length is not None and not self.chunked:
                if len(self.buffer) - self.body_start >= self.length:
                    end = self.body_start + self.length
                    self.reply.set_result((self.status, bytes(self.buffer[self.body_start : end])))
            elif len(self.buffer) - max(self.body_start, 0) > MAX_REPLY:
                raise HttpError("reply too large")
        except (HttpError, ValueError) as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self._wake()

    def _end(self) -> None:
        """The server closed: the reply is complete now or never."""
        if self.reply.done():
            return
        try:
            if self.body_start < 0:
                self._header()
                if self.body_start < 0:
                    raise HttpError("connection closed in the reply's header")
            rest = bytes(self.buffer[self.body_start :])
            if self.chunked:
                self.reply.set_result((self.status, dechunk(rest)))
            elif self.length is not None:  # else all of it had come (data_received)
                raise HttpError(f"reply of {len(rest)} octets, {self.length} announced")
            else:  # RFC 9112 §6.3: delimited by the close
                self.reply.set_result((self.status, rest))
        except (HttpError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if not self.reply.done():
            error = exc if isinstance(exc, HttpError) else HttpError(f"bad reply: {exc}")
            self.reply.set_exception(error)

    def _header(self) -> None:
        """Parse the status line and header section once the empty line that ends it is in."""
        # RFC 9112 §2.1: the header section ends with an empty line (CRLF; §2.2: a bare LF
        # tolerated). A find, not a regex: this runs on every reply.
        end, mark = self.buffer.find(b"\r\n\r\n", 0, MAX_HEADER), 4
        if end < 0:
            end, mark = self.buffer.find(b"\n\n", 0, MAX_HEADER), 2
        if end < 0:
            if len(self.buffer) >= MAX_HEADER:
                raise HttpError("reply header section too large")
            return
        status_line, *lines = bytes(self.buffer[:end]).split(b"\n")
        match = _STATUS.fullmatch(status_line)
        if match is None:
            raise HttpError(f"not an HTTP/1.1 status line: {status_line[:60]!r}")
        if len(lines) > MAX_HEADER_LINES:
            raise HttpError("too many header lines")
        for line in lines:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                self.length = int(value.strip())
                if self.length > MAX_REPLY:
                    raise HttpError(f"reply of {self.length} octets")
            elif key == b"transfer-encoding":
                # RFC 9112 §7.1: it takes precedence over Content-Length
                self.chunked = value.strip().lower().endswith(b"chunked")
        self.status = int(match.group(1))
        self.body_start = end + mark


def dechunk(data: bytes) -> bytes:
    """RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ... 0 CRLF [trailers] CRLF."""
    out = bytearray()
    at = 0
    while True:
        eol = data.find(b"\n", at)
        if eol < 0:
            raise HttpError("chunked reply cut short")
        size = int(data[at:eol].split(b";", 1)[0].strip(), 16)
        at = eol + 1
        if size == 0:
            return bytes(out)  # trailer fields: none we need
        if at + size > len(data):
            raise HttpError("chunked reply cut short")
        if len(out) + size > MAX_REPLY:
            raise HttpError("reply too large")
        out += data[at : at + size]
        at += size + (2 if data[at + size : at + size + 2] == b"\r\n" else 1)
