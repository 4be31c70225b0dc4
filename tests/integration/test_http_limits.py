"""The metrics and WKD HTTP endpoints under a slowloris (issue 12, item 13: 300 connections
each sending a header a byte at a time were held for over 100 s): a cap on connections in
total and per client address, and a time limit on every request header."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.net import closed_by_server
from peers.server import MailSetup, TlsFiles
from peers.tls import TestCA

PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: hato.test\r\nX-Slow: "  # never finished


class HttpHato(HatoServer):
    """The harness server with one HTTP endpoint ([metrics] or [wkd]) and small limits."""

    def __init__(self, data_dir: Path, section: str, tls: TlsFiles | None = None) -> None:
        super().__init__(data_dir, MailSetup(tls=tls))
        self.section = section
        self.http_port = self.own_port("http_port")

    def _config_text(self) -> str:
        return super()._config_text() + "\n".join(
            (
                "",
                f"[{self.section}]",
                f'address = "{self.host}:{self.http_port}"',
                "max_connections = 5",
                "max_connections_per_ip = 3",
                # Longer than the test takes to open its connections on a loaded machine:
                # one timed out before the last is opened would leave a place free.
                "header_timeout = 6",
                *(["https = true"] if self.setup.tls is not None else []),
                "",
            )
        )


def _connect(server: HttpHato, source: str) -> socket.socket:
    sock = socket.create_connection((server.host, server.http_port), source_address=(source, 0))
    sock.sendall(PARTIAL)
    return sock


def _get(server: HttpHato, path: str) -> bytes:
    with socket.create_connection((server.host, server.http_port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: hato.test\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    ("section", "path"),
    [("metrics", "/metrics"), ("wkd", "/.well-known/openpgpkey/example.org/policy")],
)
def test_a_slowloris_is_capped_and_timed_out(tmp_path: Path, section: str, path: str) -> None:
    server = HttpHato(tmp_path / "data", section)
    server.start()
    try:
        held = [_connect(server, "127.0.0.3") for _ in range(3)]
        # Past the address's share: closed at once, before aiohttp reads a byte.
        assert closed_by_server(_connect(server, "127.0.0.3")), server.log_text()
        # Another address gets its share until the endpoint's total (5) is reached.
        held += [_connect(server, "127.0.0.4") for _ in range(2)]
        assert closed_by_server(_connect(server, "127.0.0.5")), server.log_text()
        refused = server.wait_for_log(
            rf"(?s)event=http-refused endpoint={section} client=127\.0\.0\.3 "
            rf"reason=connection-limit.*event=http-refused endpoint={section} client=127\.0\.0\.5"
        )
        assert refused, server.log_text()
        # Nobody finishes a header within header_timeout (6 s): every one is closed ...
        for sock in held:
            assert closed_by_server(sock), server.log_text()
        assert server.wait_for_log(rf"(?s)(event=http-timeout endpoint={section} .*){{5}}")
        # ... and a real request is answered again.
        answer = _get(server, path)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        server.stop()


def test_https_wkd_counts_handshakes_from_accept(tmp_path: Path, test_ca: TestCA) -> None:
    """With https, a connection that never sends a ClientHello holds its place and is dropped
    when header_timeout is up, like a slow header."""
    server = HttpHato(tmp_path / "data", "wkd", test_ca.tls_files())
    server.start()
    try:
        address = (server.host, server.http_port)
        held = [socket.create_connection(address, source_address=("127.0.0.3", 0))]
        held += [socket.create_connection(address, source_address=("127.0.0.3", 0))]
        held += [socket.create_connection(address, source_address=("127.0.0.3", 0))]
        extra = socket.create_connection(address, source_address=("127.0.0.3", 0))
        assert closed_by_server(extra), server.log_text()
        for sock in held:
            assert closed_by_server(sock), server.log_text()
        context = test_ca.client_context()
        with (
            socket.create_connection(address, timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="hato.test") as tls,
        ):
            request = "GET /.well-known/openpgpkey/example.org/policy HTTP/1.1\r\n"
            tls.sendall(f"{request}Host: hato.test\r\nConnection: close\r\n\r\n".encode())
            answer = tls.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert server.wait_for_log(r"event=http-refused endpoint=wkd client=127\.0\.0\.3")
    finally:
        server.stop()
