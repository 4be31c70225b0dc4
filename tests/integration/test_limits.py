"""Connection limits, timeouts and graceful stop of the real server (issue 2: 421 4.7.0 past the
per-IP limit, idle timeout; SIGTERM finishes the transaction in progress)."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import MailSetup


class TunedHato(HatoServer):
    """The harness server with extra [limits] keys appended to its config."""

    def __init__(self, data_dir: Path, setup: MailSetup, extra_limits: str) -> None:
        super().__init__(data_dir, setup)
        self.extra_limits = extra_limits

    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace("[limits]\n", f"[limits]\n{self.extra_limits}\n", 1)


def _banner(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _until(sock: socket.socket, wanted: bytes) -> bytes:
    """What the server sends until `wanted` is among it (10 s at most for each read)."""
    sock.settimeout(10)
    data = b""
    while wanted not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _session_of(server: HatoServer, sock: socket.socket) -> str:
    """The session id Hato gave the connection `sock` (its connect line names the client port)."""
    port = sock.getsockname()[1]
    found = server.wait_for_log(rf"event=connect session=(\S+) .* port={port} ", timeout=30)
    assert found, server.log_text()
    return found.group(1)


def test_per_ip_limit_answers_421_and_frees_up(tmp_path: Path) -> None:
    server = TunedHato(tmp_path / "data", MailSetup(max_connections_per_ip=3), "")
    server.start()
    try:
        held = [socket.create_connection((server.host, server.port)) for _ in range(3)]
        for sock in held:
            assert _banner(sock).startswith(b"220 ")
        extra = socket.create_connection((server.host, server.port))
        assert _banner(extra).startswith(b"421 4.7.0")
        assert extra.recv(100) == b""  # and the connection is closed
        extra.close()
        gone = held.pop()
        session = _session_of(server, gone)
        gone.close()
        # Its place is free once the session has ended (it logs that after giving it back).
        disconnect = rf"event=disconnect session={re.escape(session)} "
        assert server.wait_for_log(disconnect, timeout=30), server.log_text()
        again = socket.create_connection((server.host, server.port))
        assert _banner(again).startswith(b"220 ")
        for sock in [*held, again]:
            sock.close()
    finally:
        server.stop()


def test_idle_client_is_told_421_and_dropped(tmp_path: Path) -> None:
    server = TunedHato(tmp_path / "data", MailSetup(), "idle_timeout = 1\nsession_timeout = 60")
    server.start()
    try:
        sock = socket.create_connection((server.host, server.port))
        started = time.monotonic()
        # One read can hold both lines (the test held up for the idle second on a loaded
        # machine): the replies are read as a stream, not one line a read.
        said = _until(sock, b"\r\n421 4.4.2")
        greeting, rest = said.split(b"\r\n", 1)
        assert greeting.startswith(b"220 ") and rest.startswith(b"421 4.4.2"), said
        assert time.monotonic() - started < 10
        sock.close()
    finally:
        server.stop()


def test_sigterm_finishes_the_message_in_progress(tmp_path: Path) -> None:
    server = HatoServer(tmp_path / "data")
    server.start()
    sock = socket.create_connection((server.host, server.port))
    assert _banner(sock).startswith(b"220 ")
    marker = "drain-" + str(time.time_ns())
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
    assert b"354 " in _until(sock, b"354 ")  # the transaction is in progress
    sock.sendall(f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhalf".encode())
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    # New connections are no longer taken once the server says it stops (it closes its
    # listeners right after that line: a probe in between may still get in, so a few tries).
    assert server.wait_for_log(r"event=stopping ", timeout=30), server.log_text()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((server.host, server.port), timeout=2).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the listener still accepts connections after SIGTERM"
        time.sleep(0.05)
    # ...but the message in progress completes with its 250, then the server says goodbye.
    sock.sendall(b" done\r\n.\r\n")
    replies = b""
    sock.settimeout(10)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        replies += chunk
    assert b"250 2.0.0" in replies and b"421 4.3.2" in replies, replies
    sock.close()
    deadline = time.monotonic() + 20
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.alive()
    assert server.exit_code() == 0
    server.start()  # the accepted message is delivered after the restart at the latest
    try:
        box = server.mailbox("bob", "example.org")
        assert len(maildir.wait_for_marker(box, marker)) == 1
    finally:
        server.stop()


def test_a_stranger_guessing_recipients_is_cut_off_at_the_limit(tmp_path: Path) -> None:
    # Each refused RCPT is a user look-up and a log line: limits.max_refused_recipients of
    # them per connection (here 5), then 421 4.7.0 and close; RFC 5321 §3.8.
    server = TunedHato(tmp_path / "data", MailSetup(), "max_refused_recipients = 5")
    server.start()
    try:
        sock = socket.create_connection((server.host, server.port))
        assert _banner(sock).startswith(b"220 ")
        guesses = b"".join(b"RCPT TO:<guess%d@users.test>\r\n" % i for i in range(50))
        sock.sendall(b"EHLO stranger.example\r\nMAIL FROM:<a@stranger.example>\r\n" + guesses)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
        sock.close()
        codes = [line[:3] for line in replies.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"250", b"250"] + [b"550"] * 5 + [b"421"]
        assert b"421 4.7.0 Too many refused recipients" in replies
    finally:
        server.stop()
    assert server.log_text().count("event=rcpt-refused") == 5  # the 6th guess never asked
