"""A 421 closes the channel (RFC 5321 §3.8, §4.2.2) at once, whatever the client does: over
STARTTLS (587) and implicit TLS (465) Hato does not wait for a client that never answers its
TLS close_notify (RFC 8446 §6.1) or never reads. The closed session gives its per-IP place back
at once, and `hato serve` stops promptly (idle sessions told 421 4.3.2) while such clients hold
their sockets. The clients here speak TLS by hand (ssl.MemoryBIO) so that they can see the TCP
stream's own EOF, and never send a close_notify of their own."""

from __future__ import annotations

import base64
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.server import AuthSetup, submission_setup
from peers.tls import TestCA
from test_workers import TwoWorkers

from hato.server.session import CLOSE_GRACE

# One failed AUTH blocks the client (421 4.7.0); one connection per client IP.
AUTH = AuthSetup(failure_delay=0.05, max_failure_delay=0.1, max_failures=1, block_time=3600)
# The server aborts what is left of a close after CLOSE_GRACE; the loop's own TLS shutdown
# timeout, which held such a connection before, is 30 s. The margin is for a loaded machine.
BOUND = CLOSE_GRACE + 10.0
BLOCKED = b"Too many failed authentication attempts"
TOO_MANY = b"Too many connections"


class BareTls:
    """TLS spoken by hand over a socket: it reads replies, and tells when the server closed TCP."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="hato.test")
        self.buffer = b""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._push()

    def _push(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pump(self) -> None:
        self._push()
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the exchange")
        self.incoming.write(data)

    def command(self, line: bytes) -> bytes:
        self.tls.write(line + b"\r\n")
        self._push()
        return self.reply()

    def reply(self) -> bytes:
        """One reply (RFC 5321 §4.2.1: the last line has a space after the code)."""
        while True:
            lines = self.buffer.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if line[3:4] != b"-":
                    self.buffer = b"\r\n".join(lines[index + 1 :])
                    return b"\r\n".join(lines[: index + 1])
            try:
                self.buffer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._pump()

    def seconds_to_tcp_eof(self, limit: float) -> float:
        """How long until the server closed the TCP connection (what arrives meanwhile, the
        close_notify, is never answered); `limit` if it did not by then."""
        start = time.monotonic()
        self.sock.settimeout(limit)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return limit
        except ConnectionResetError:
            pass
        return time.monotonic() - start


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND, source_address=(source, 0))


def _plain_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(1)  # one octet at a time: nothing of the TLS stream is read here
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def _starttls(port: int, source: str, ca: TestCA) -> BareTls:
    sock = _connect(port, source)
    for line, code in ((None, b"220"), (b"EHLO client.test", b"250"), (b"STARTTLS", b"220")):
        if line is not None:
            sock.sendall(line + b"\r\n")
        reply = _plain_reply(sock)
        assert reply.startswith(code), reply
    session = BareTls(sock, ca.client_context())
    assert session.command(b"EHLO client.test").startswith(b"250")
    return session


def _implicit(server: HatoServer, source: str, ca: TestCA) -> tuple[BareTls, bytes]:
    session = BareTls(_connect(server.submissions_port, source), ca.client_context())
    return session, session.reply()


def _fail_auth(session: BareTls) -> bytes:
    plain = base64.b64encode(b"\0alice@users.test\0wrong")
    return session.command(b"AUTH PLAIN " + plain)


class OnePerClient(HatoServer):
    """Ports 587 and 465 with one connection per client IP."""

    def _config_text(self) -> str:
        text = super()._config_text()
        for port in (self.submission_port, self.submissions_port):
            listener = f'address = "{self.host}:{port}"'
            text = text.replace(listener, f"{listener}\nmax_connections_per_ip = 1")
        return text


class OnePerClientWorkers(OnePerClient, TwoWorkers):
    """The same with `[server] workers = 2`: the counts and blocks are shared by the workers."""


def _server(tmp_path: Path, ca: TestCA, kind: type[HatoServer] = OnePerClient) -> HatoServer:
    server = kind(tmp_path / "data", submission_setup(ca.tls_files(), AUTH))
    server.start()
    return server


def test_a_421_over_starttls_closes_at_once_and_frees_the_place(
    tmp_path: Path, test_ca: TestCA
) -> None:
    server = _server(tmp_path, test_ca)
    try:
        client = "127.0.0.81"
        first = _starttls(server.submission_port, client, test_ca)
        reply = _fail_auth(first)
        assert reply.startswith(b"421 4.7.0") and BLOCKED in reply, reply
        # Its one place is free at once, though this client still holds its socket: a new
        # connection is told it is blocked, not that it has too many connections.
        again = _connect(server.submission_port, client)
        greeting = _plain_reply(again)
        assert greeting.startswith(b"421 4.7.0") and BLOCKED in greeting, greeting
        again.close()
        assert first.seconds_to_tcp_eof(BOUND) < BOUND
    finally:
        server.stop()


@pytest.mark.parametrize("kind", [OnePerClient, OnePerClientWorkers])
def test_a_421_on_465_closes_at_once_and_the_server_stops_promptly(
    tmp_path: Path, test_ca: TestCA, kind: type[HatoServer]
) -> None:
    """With workers, each worker exits as promptly, and the supervisor with them."""
    server = _server(tmp_path, test_ca, kind)
    assert server.proc is not None
    try:
        blocked = "127.0.0.82"
        first, greeting = _implicit(server, blocked, test_ca)
        assert greeting.startswith(b"220"), greeting
        assert first.command(b"EHLO client.test").startswith(b"250")
        reply = _fail_auth(first)
        assert reply.startswith(b"421 4.7.0") and BLOCKED in reply, reply
        # Refused at its greeting (blocked), it holds this one open too, never reading on.
        refused, greeting = _implicit(server, blocked, test_ca)
        assert greeting.startswith(b"421 4.7.0") and BLOCKED in greeting, greeting
        # An idle session (between commands) of another client, over TLS.
        idle, greeting = _implicit(server, "127.0.0.83", test_ca)
        assert greeting.startswith(b"220"), greeting
        assert idle.command(b"EHLO client.test").startswith(b"250")
        assert refused.seconds_to_tcp_eof(BOUND) < BOUND

        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert idle.reply().startswith(b"421 4.3.2")  # RFC 3463: not accepting messages
        server.proc.wait(timeout=BOUND)
        assert time.monotonic() - started < BOUND
        assert server.exit_code() == 0, server.log_text()[-3000:]
        assert first.seconds_to_tcp_eof(BOUND) < BOUND
        assert idle.seconds_to_tcp_eof(BOUND) < BOUND
    finally:
        server.stop()
