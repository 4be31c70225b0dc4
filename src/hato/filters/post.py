"""One HTTP/1.1 POST over a connection of its own, for rspamd's checks (rspamd.py): the request
written as the body is yielded, the reply read until its end.

Why not aiohttp here: rspamd's normal worker closes the connection after every reply, so no
pool is ever reused, and aiohttp's request and response machinery cost about 0.6 ms of CPU
per check on our 2-CPU benchmark machine, more than the rest of Hato's work on a message
(docs/performance.md, "The rspamd check"). This is the part of HTTP/1.1 (RFC 9112) that
exchange needs and no more: a request with a Content-Length body, `Connection: close`; a
reply whose body is delimited by Content-Length, chunked transfer coding, or the connection's
close. The caller bounds the whole exchange in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_REPLY = 16 * 1024 * 1024  # octets of reply body we read at most
MAX_HEADER_LINES = 100
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\r?\n")
# RFC 9110 §5.5: a field value has no CR, LF or NUL (we replace other controls too).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


class HttpError(Exception):
    """The server could not be reached or its reply was not HTTP/1.1 we understand."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """host, port and path prefix of an http:// URL (config checked its form)."""

    host: str
    port: int
    prefix: str
    authority: str

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{url}: not an http://HOST:PORT URL")
        return cls(parts.hostname, parts.port, parts.path.rstrip("/"), parts.netloc)


async def post(
    endpoint: Endpoint,
    path: str,
    headers: list[tuple[str, str]],
    size: int,
    body: AsyncIterable[bytes],
) -> tuple[int, bytes]:
    """(status, reply body) of `POST path` with the `size` octets `body` yields."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        lines = [
            f"POST {endpoint.prefix}{path} HTTP/1.1",
            f"Host: {endpoint.authority}",
            "Connection: close",
            f"Content-Length: {size}",
            *(f"{name}: {_CONTROLS.sub('?', value)}" for name, value in headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        first = True
        async for chunk in body:
            # The head and a first chunk in one write (one segment for a small message).
            writer.write(head + chunk if first else chunk)
            first = False
            await writer.drain()
        if first:
            writer.write(head)
        return await _reply(reader)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise HttpError(f"bad reply: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    match = _STATUS.fullmatch(status_line)
    if match is None:
        raise HttpError(f"not an HTTP/1.1 status line: {status_line[:60]!r}")
    length: int | None = None
    chunked = False
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise HttpError("connection closed in the reply's header")
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
    else:
        raise HttpError("too many header lines")
    status = int(match.group(1))
    if chunked:  # RFC 9112 §7.1: it takes precedence over Content-Length
        return status, await _chunked(reader)
    if length is not None:
        if length > MAX_REPLY:
            raise HttpError(f"reply of {length} octets")
        return status, await reader.readexactly(length)
    data = await reader.read(MAX_REPLY + 1)  # RFC 9112 §6.3: delimited by the close
    while len(data) <= MAX_REPLY and (more := await reader.read(MAX_REPLY + 1 - len(data))):
        data += more
    if len(data) > MAX_REPLY:
        raise HttpError("reply too large")
    return status, data


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    """RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ... 0 CRLF [trailers] CRLF."""
    out = bytearray()
    while True:
        size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailer fields: none we need
            return bytes(out)
        if len(out) + size > MAX_REPLY:
            raise HttpError("reply too large")
        out += await reader.readexactly(size)
        await reader.readexactly(2)
