"""The HTTPS GET of the MTA-STS fetch (delivery/httpsget.py) against a loopback TLS server that
answers raw bytes: bodies by Content-Length, chunked (RFC 9112 §7.1) and the connection's close,
the size limit, and replies it refuses."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from peers.net import refused_port

from hato.delivery.httpsget import HttpsGetError, Reply, https_get
from hato.server.tls import ensure_self_signed, server_context

HOST = "mta-sts.example.test"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"


def get(tmp_path: Path, answer: bytes, limit: int = 100) -> tuple[Reply, bytes]:
    """(the reply, the request the server read)."""
    cert, key = ensure_self_signed(tmp_path / "tls", HOST)
    trust = ssl.create_default_context(cafile=str(cert))
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        for start in range(0, len(answer), 7):  # in pieces, as a network may deliver them
            writer.write(answer[start : start + 7])
            await writer.drain()
        writer.close()

    async def scenario() -> Reply:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context(cert, key))
        port = server.sockets[0].getsockname()[1]
        try:
            return await https_get(
                HOST, "/.well-known/mta-sts.txt", trust, limit, ("127.0.0.1", port)
            )
        finally:
            server.close()

    reply = asyncio.run(asyncio.wait_for(scenario(), 20))
    return reply, seen[0]


def test_content_length_body_and_the_request(tmp_path: Path) -> None:
    reply, request = get(tmp_path, HEAD + b"Content-Length: 5\r\n\r\nhello")
    assert reply == Reply(200, "text/plain", b"hello")
    assert request.startswith(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
    assert b"\r\nHost: mta-sts.example.test\r\n" in request
    assert b"Accept-Encoding" not in request  # the identity coding only


def test_chunked_body(tmp_path: Path) -> None:
    chunks = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    reply, _ = get(tmp_path, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert reply.body == b"hello, world"


def test_body_to_the_close(tmp_path: Path) -> None:
    reply, _ = get(tmp_path, HEAD + b"\r\nversion: STSv1\n")
    assert reply.body == b"version: STSv1\n"


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 500\r\n\r\n", b"\r\n", b"Transfer-Encoding: chunked\r\n\r\n1f4\r\n"],
)
def test_a_body_over_the_limit_is_cut_one_octet_past_it(tmp_path: Path, framing: bytes) -> None:
    reply, _ = get(tmp_path, HEAD + framing + b"x" * 500, limit=100)
    assert len(reply.body) == 101


def test_status_and_redirect_are_the_callers(tmp_path: Path) -> None:
    answer = b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n"
    reply, _ = get(tmp_path, answer)
    assert (reply.status, reply.body) == (302, b"")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 status line"),
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", "transfer coding 'gzip'"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n", "malformed chunk size"),
        (HEAD + b"Content-Length: 10\r\n\r\nshort", "connection closed in the body"),
        (HEAD + b"no colon here\r\n\r\n", "malformed header field"),
        (HEAD, "connection closed in the header"),
    ],
)
def test_replies_it_refuses(tmp_path: Path, answer: bytes, error: str) -> None:
    with pytest.raises(HttpsGetError, match=error):
        get(tmp_path, answer)


def test_a_refused_address_is_an_os_error(tmp_path: Path) -> None:
    # A port nothing listens on: the connection's failure, in words, not a hang.
    cert, _ = ensure_self_signed(tmp_path / "tls", HOST)
    trust = ssl.create_default_context(cafile=str(cert))
    with refused_port() as port, pytest.raises(OSError, match="port"):
        asyncio.run(https_get(HOST, "/", trust, 100, ("127.0.0.1", port)))
