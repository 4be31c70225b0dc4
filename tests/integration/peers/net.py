"""Loopback helpers: free ports, banner waits, finding peer binaries."""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

LOOPBACK = "127.0.0.1"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed: set[int] = set()
# Its own generator from the OS: a per-test reseeded `random` would give two test workers the
# same sequence.
_random = random.SystemRandom()


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This test process's own part of [low, high): pytest-xdist's workers (gw0, gw1, ...) each
    keep their own `_handed`, so two of them could otherwise pick the same port between one's
    probe and its server's bind (CI saw "Address already in use" with two workers)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        index = int(name.removeprefix("gw"))
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        return low, high
    if not 0 <= index < count:
        return low, high
    size = (high - low) // count
    return low + index * size, low + (index + 1) * size


def free_port() -> int:
    """A free TCP port on loopback, below the kernel's ephemeral range when there is room: a
    port the kernel picked for `bind(0)` is in that range, and can be taken by some client
    connection's local end before the server binds it (CI saw "Address already in use").
    Ports handed out before in this process are not handed out again, nor ports of another
    test worker's slice."""
    low, high = _worker_slice(10000, _EPHEMERAL_LOW)
    if high - low >= 1000:
        for _ in range(100):
            port = _random.randrange(low, high)
            if port in _handed:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOOPBACK, port))
                except OSError:
                    continue
            _handed.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        found: int = sock.getsockname()[1]
        _handed.add(found)
        return found


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused, for as long as the block runs: bound and
    never listening. A port bound and closed again could be taken meanwhile, by another test's
    listener or, being in the ephemeral range, by the connecting client's own local end (a TCP
    self-connect: the "refused" port answers); a bound port is neither."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        yield port


class RawSession:
    """A raw SMTP connection for scripted dialogs: bytes out exactly as given, replies parsed."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str = "hato.test",
        source: str | None = None,
    ) -> None:
        """With `tls`, the connection starts with a TLS handshake (implicit TLS, RFC 8314).
        `source`: the local address to connect from (any of 127.0.0.0/8 is loopback), so one
        test can be several clients."""
        self.sock: socket.socket = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self._buf = b""

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet read as a reply."""
        return self._buf

    def start_tls(self, context: ssl.SSLContext, server_hostname: str = "hato.test") -> None:
        """Switch this connection to TLS (after the server's 220 to STARTTLS, RFC 3207 §4).

        Plaintext already received but not read is dropped, as a careful client would.
        """
        self._buf = b""
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def reply(self) -> tuple[int, list[bytes]]:
        """Read one reply. RFC 5321 §4.2.1: "ddd-" continues a reply, "ddd " ends it."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self._buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed by peer after {lines!r} {self._buf!r}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> tuple[int, list[bytes]]:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def banner(host: str, port: int, timeout: float = 5.0) -> bytes:
    """Connect, read the greeting and QUIT. Returns the last greeting line."""
    with RawSession(host, port, timeout) as session:
        return session.reply()[1][-1]


def wait_for_banner(
    host: str,
    port: int,
    deadline: float,
    alive: Callable[[], bool] | None = None,
    *,
    any_reply: bool = False,
    timeout: float = 2.0,
) -> bytes:
    """Poll until the port answers a 220 greeting (RFC 5321 §4.3.1) or the deadline passes;
    with `any_reply`, any greeting (a 554 refusal too). `timeout` bounds one wait for it.

    `alive`, when given, is a callable returning False once the server process has died.
    """
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"server on {host}:{port} exited before answering")
        try:
            line = banner(host, port, timeout=timeout)
        except OSError as exc:
            last_error = exc
            time.sleep(0.05)
            continue
        if line.startswith(b"220") or any_reply:
            return line
        raise RuntimeError(f"server on {host}:{port} greeted with {line!r}, not 220")
    raise TimeoutError(f"no 220 banner on {host}:{port} in time (last error: {last_error})")


def wait_for_listener(
    host: str, port: int, deadline: float, alive: Callable[[], bool] | None = None
) -> None:
    """Poll until a TCP connection to the port succeeds (for implicit-TLS ports, where the
    greeting comes only after a handshake)."""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"server on {host}:{port} exited before listening")
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} in time")


def closed_by_server(sock: socket.socket, timeout: float = 20.0) -> bool:
    """Wait (at most `timeout` s) for the server to close a connection we have stopped writing
    to; the socket is closed afterwards either way."""
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def find_peer(name: str) -> str | None:
    """The path of a Debian peer binary, also looking in the sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> NoReturn:
    """A peer or a privilege the test needs is missing: fail in CI (where .ci/run provides
    everything), skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def require_peer(name: str) -> str:
    """The path of the Debian peer `name`; missing: `cannot_run`."""
    path = find_peer(name)
    if path is None:
        cannot_run(f"peer {name!r} is not installed (.ci/run installs it from Debian)")
    return path
