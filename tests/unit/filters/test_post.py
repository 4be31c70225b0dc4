"""post.py against a scripted HTTP server on loopback: the request as sent, and replies
delimited by Content-Length, chunked coding or the close; nonsense is an HttpError."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hato.filters.post import Endpoint, HttpError, post


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _exchange(reply: bytes) -> tuple[int, bytes, bytes]:
    """(status, body) of a POST to a server answering `reply`, and the request it got."""
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got.extend(head + await reader.readexactly(length))
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def run() -> tuple[int, bytes]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            endpoint = Endpoint.of(f"http://127.0.0.1:{port}/base")
            headers = [("From", "<a@b>"), ("Helo", "evil\r\nX-Injected: 1")]
            return await post(endpoint, "/checkv2", headers, 10, _body(b"hello", b"world"))
        finally:
            server.close()

    status, body = asyncio.run(asyncio.wait_for(run(), 30))
    return status, body, bytes(got)


def test_the_request_and_a_reply_with_content_length() -> None:
    status, body, request = _exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert (status, body) == (200, b"{}")
    head, _, sent = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/checkv2 HTTP/1.1"
    assert b"Connection: close" in lines and b"Content-Length: 10" in lines
    # RFC 9110 §5.5: no CR/LF in a field value: a header cannot be injected.
    assert b"Helo: evil??X-Injected: 1" in lines
    assert sent == b"helloworld"


def test_a_chunked_reply_and_one_ended_by_the_close() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n3;x=1\r\n":1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert _exchange(chunked)[:2] == (200, b'{"a":1}')
    assert _exchange(b"HTTP/1.0 500 Oops\r\n\r\nerror text")[:2] == (500, b"error text")


@pytest.mark.parametrize(
    "reply", [b"SMTP/1.0 200\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", b""]
)
def test_nonsense_or_a_short_reply_is_an_http_error(reply: bytes) -> None:
    with pytest.raises(HttpError):
        _exchange(reply)


def test_a_reply_in_pieces_ends_at_its_length_without_waiting_for_the_close() -> None:
    """The server sends the reply a few octets at a time and keeps the connection open:
    the reply is complete at its Content-Length, and a large request body is written with
    the transport's flow control (the server reads it all)."""
    big = b"x" * (4 * 1024 * 1024)
    got = bytearray()

    async def run() -> tuple[int, bytes]:
        release = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            got.extend(await reader.readexactly(length))
            reply = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": true}'
            for at in range(0, len(reply), 7):
                writer.write(reply[at : at + 7])
                await writer.drain()
            await release.wait()  # the connection stays open until the client is done
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            endpoint = Endpoint.of(f"http://127.0.0.1:{port}")
            half = len(big) // 2
            return await post(endpoint, "/x", [], len(big), _body(big[:half], big[half:]))
        finally:
            release.set()
            server.close()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == (200, b'{"a": true}')
    assert bytes(got) == big


def test_a_unix_socket(tmp_path: Path) -> None:
    """ "unix:/PATH": the same exchange over a unix socket (rspamd's bind_socket)."""
    path = str(tmp_path / "normal.sock")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def run() -> tuple[int, bytes]:
        server = await asyncio.start_unix_server(serve, path)
        try:
            endpoint = Endpoint.of(f"unix:{path}")
            return await post(endpoint, "/checkv2", [], 5, _body(b"hello"))
        finally:
            server.close()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == (200, b"hello")


def test_a_message_in_memory_goes_with_the_head_in_one_gathering_write() -> None:
    """A tuple of parts (a message still in memory) is written as it is, after the head,
    in one writelines (writev), not joined into one string first; the server gets it whole."""
    got = bytearray()
    writes: list[tuple[bytes, ...]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got.extend(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def run() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def spied(*args: Any, **kwargs: Any) -> Any:
            transport, protocol = await real(*args, **kwargs)
            original = transport.writelines

            def writelines(data: tuple[bytes, ...]) -> None:
                writes.append(tuple(data))
                original(data)

            transport.writelines = writelines  # type: ignore[method-assign,assignment]
            return transport, protocol

        loop.create_connection = spied  # type: ignore[method-assign]
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            endpoint = Endpoint.of(f"http://127.0.0.1:{port}")
            return await post(endpoint, "/checkv2", [], 10, (b"Received: x\r\n", b"\r\nbody"))
        finally:
            server.close()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == (200, b"{}")
    assert bytes(got) == b"Received: x\r\n\r\nbody"[:10]
    assert len(writes) == 1 and writes[0][1:] == (b"Received: x\r\n", b"\r\nbody")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",  # announced too large
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000,  # delimited by the close, too long
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: padding\r\n" * 200,  # a header section without end
    ],
)
def test_a_reply_too_large_is_an_http_error_without_reading_it_all(
    reply: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rspamd is a local peer, but what we read of it is bounded all the same."""
    monkeypatch.setattr("hato.filters.post.MAX_REPLY", 1000)
    monkeypatch.setattr("hato.filters.post.MAX_HEADER", 1000)
    with pytest.raises(HttpError, match=r"too large|octets"):
        _exchange(reply)
