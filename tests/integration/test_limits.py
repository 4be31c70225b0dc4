"""Connection limits, timeouts and graceful stop of the real server (issue 2: 421 4.7.0 past the
per-IP limit, idle timeout; SIGTERM finishes the transaction in progress)."""

from __future__ import annotations

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
        held.pop().close()
        time.sleep(0.3)
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
        assert _banner(sock).startswith(b"220 ")
        started = time.monotonic()
        rest = _banner(sock)
        assert rest.startswith(b"421 4.4.2"), rest
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
    time.sleep(0.5)
    sock.sendall(f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhalf".encode())
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are no longer taken...
    try:
        probe = socket.create_connection((server.host, server.port), timeout=2)
        probe.close()
        refused = False
    except OSError:
        refused = True
    assert refused, "the listener still accepts connections after SIGTERM"
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
        assert len(maildir.wait_for_marker(box, marker, timeout=20)) == 1
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
