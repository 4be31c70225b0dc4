"""One HTTPS GET over a connection of its own, for the MTA-STS policy fetch (mtasts.py).

Why not aiohttp: a policy is fetched at most once per domain and max_age, and aiohttp's client
(with yarl, multidict and the rest) was ~7.6 MiB of every server process that nothing else of
a default server needs (issue 15 item 2, docs/performance.md "Memory"). This is the part of
HTTP/1.1 (RFC 9112) that fetch needs and no more: a GET with `Connection: close` and no
Accept-Encoding (so the body comes in the identity coding, RFC 9110 §12.5.3); a reply whose
body is delimited by Content-Length, chunked transfer coding (RFC 9112 §7.1) or the
connection's close, read up to a limit. Redirects are not followed (the caller sees the 3xx).
The connection tries the host's addresses as RFC 8305 says (`_connect`), as aiohttp did.
The certificate is checked by `context` for `host` (the name asked, also with `connect_to`).

Must not import anything of hato.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import ssl
from asyncio import staggered
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

MAX_HEADER_LINES = 100
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # RFC 9112 §7.1: chunk-size = 1*HEXDIG


class HttpsGetError(Exception):
    """The reply was not HTTP/1.1 we understand, or its body was over the limit."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str  # the media type, lower case, without parameters ("" when none)
    body: bytes  # at most `limit` + 1 octets: more means over the limit


async def https_get(
    host: str,
    path: str,
    context: ssl.SSLContext,
    limit: int,
    connect_to: tuple[str, int] | None = None,
) -> Reply:
    """GET https://host{path}; OSError, ssl.SSLError or HttpsGetError when it fails. The
    caller bounds it in time."""
    address, port = connect_to or (host, 443)
    sock = await _connect(address, port)
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=host, limit=64 * 1024
        )
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\n"
            "Connection: close\r\nUser-Agent: hato\r\n\r\n".encode("ascii")
        )
        status = _STATUS.fullmatch(await _line(reader))
        if status is None:
            raise HttpsGetError("not an HTTP/1.1 status line")
        headers = await _headers(reader)
        body = await _body(reader, headers, limit)
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        return Reply(int(status.group(1)), media, body)
    finally:
        writer.close()
        # The reply is in; a close_notify that did not come changes nothing.
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _connect(host: str, port: int) -> socket.socket:
    """A TCP connection to one of `host`'s addresses, the next address tried 250 ms after the
    previous one while that one is still trying (RFC 8305 §5, "Happy Eyeballs": a host whose
    IPv6 route drops packets still answers over IPv4 at once), families alternating (§4).
    What aiohttp did; uvloop's create_connection has no happy_eyeballs_delay."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host}: no address")
    by_family: dict[int, list[tuple[Any, ...]]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    ordered = [
        info
        for group in itertools.zip_longest(*by_family.values())
        for info in group
        if info is not None
    ]

    def attempt(info: tuple[Any, ...]) -> Callable[[], Awaitable[socket.socket]]:
        async def connect() -> socket.socket:
            family, kind, proto, _, address = info
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            return sock

        return connect

    winner, _, errors = await staggered.staggered_race([attempt(i) for i in ordered], 0.25)
    if not isinstance(winner, socket.socket):
        raise OSError(f"{host} port {port}: " + "; ".join(str(e) for e in errors if e))
    return winner


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpsGetError("header line too long") from None
    except asyncio.IncompleteReadError:
        raise HttpsGetError("connection closed in the header") from None


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """The header fields, names lower case (RFC 9110 §5.1); a repeated one: the last."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await _line(reader)
        if line in (b"\r\n", b"\n"):
            return fields
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise HttpsGetError("malformed header field")
        fields[name.lower()] = value.strip()
    raise HttpsGetError("too many header fields")


async def _body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
    coding = headers.get("transfer-encoding", "").lower()
    if coding:
        # RFC 9112 §6.1: chunked is the final coding; no other is asked for or understood.
        if coding != "chunked":
            raise HttpsGetError(f"transfer coding {coding!r}")
        return await _chunked(reader, limit)
    length = headers.get("content-length")
    if length is None:  # RFC 9112 §6.3: delimited by the connection's close
        body = bytearray()
        while len(body) <= limit:
            part = await reader.read(limit + 1 - len(body))  # what has come, up to that
            if not part:
                break
            body += part
        return bytes(body)
    if not length.isdigit():
        raise HttpsGetError("malformed Content-Length")
    wanted = min(int(length), limit + 1)
    try:
        return await reader.readexactly(wanted)
    except asyncio.IncompleteReadError:
        raise HttpsGetError("connection closed in the body") from None


async def _chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    """RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF chunk-data CRLF ... last-chunk."""
    body = bytearray()
    while len(body) <= limit:
        size_text = (await _line(reader)).split(b";", 1)[0].strip()
        if _HEX.fullmatch(size_text) is None:
            raise HttpsGetError("malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            return bytes(body)
        try:
            body += await reader.readexactly(min(size, limit + 1 - len(body)))
            if len(body) > limit:
                break
            await reader.readexactly(2)  # the CRLF after the chunk's data
        except asyncio.IncompleteReadError:
            raise HttpsGetError("connection closed in a chunk") from None
    return bytes(body)
