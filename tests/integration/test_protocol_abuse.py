"""Protocol abuse without AUTH on the real server (red team, 2026-12-08): a client that never
reads its replies, junk commands (NOOP, RSET, VRFY, HELP, ... repeated forever), failing MAIL
FROMs and tiny BDAT chunks. Each costs the server a bounded amount of memory and work per
session: the session stops reading, or ends with 421 4.7.0 (RFC 5321 §3.8)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.server import MailSetup

# What a client pipelines without reading: far more than the kernel's socket buffers on both
# sides hold.
FLOOD_BYTES = 24 * 1024 * 1024


class TunedHato(HatoServer):
    """The harness server with extra [limits] keys."""

    def __init__(self, data_dir: Path, extra_limits: str = "") -> None:
        super().__init__(data_dir, MailSetup())
        self.extra_limits = extra_limits

    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace("[limits]\n", f"[limits]\n{self.extra_limits}\n", 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunedHato]:
    """One server for the module, with the default limits (max_junk_commands 100,
    max_bad_commands 20): each test uses its own connections."""
    hato = TunedHato(tmp_path_factory.mktemp("abuse") / "data")
    hato.start()
    try:
        yield hato
    finally:
        hato.stop()


def _connect(server: HatoServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
    sock.settimeout(30)
    sock.connect((server.host, server.port))
    return sock


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """The last lines of the next `count` replies."""
    data = b""
    lines: list[bytes] = []
    while len(lines) < count:
        chunk = sock.recv(65536)
        assert chunk, (lines, data)
        data += chunk
        *complete, data = data.split(b"\r\n")
        lines += [line for line in complete if line[3:4] == b" "]
    return lines


def _all_replies(sock: socket.socket) -> list[bytes]:
    """Every reply's last line until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [line for line in data.split(b"\r\n") if line[3:4] == b" "]


def _send_until_stalled(sock: socket.socket, data: bytes, total: int) -> int:
    """Send `data` repeatedly, up to `total` octets, until the server stops taking them (the
    socket stays unwritable for 10 s); the octets sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    offset = 0
    while sent < total:
        _, writable, _ = select.select([], [sock], [], 10)
        if not writable:
            break  # the server reads nothing more
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            continue
        sent += n
        offset = (offset + n) % len(data)
    sock.setblocking(True)
    return sent


def test_a_client_that_never_reads_its_replies_is_no_longer_read(tmp_path: Path) -> None:
    # RFC 2920 lets a client pipeline; it does not oblige the server to buffer the replies of
    # a client that never reads them. Past the transport's high-water mark, the session stops
    # reading (server/backpressure.py); before, 20 MB of EHLO grew the process by 300 MB. The
    # junk limit would end this flood early; here it is out of the way, as it would be for
    # any command the server must answer.
    server = TunedHato(tmp_path / "data", "max_junk_commands = 100000000")
    server.start()
    try:
        sock = _connect(server, rcvbuf=4096)
        assert _replies(sock, 1)[0].startswith(b"220 ")
        before = server.peak_rss_kib()
        assert before is not None
        # Each EHLO of 8 octets is answered with the capability list, ~20 times longer.
        sent = _send_until_stalled(sock, b"EHLO a\r\n" * 8192, FLOOD_BYTES)
        grown = (server.peak_rss_kib() or 0) - before
        sock.close()
        assert sent < FLOOD_BYTES, "the server read everything a non-reading client sent"  # 4.5 MB
        assert grown < 32 * 1024, f"the server grew by {grown} KiB"
        assert server.alive()
    finally:
        server.stop()


def test_recipients_past_the_limit_forever_end_the_session(server: TunedHato) -> None:
    # RFC 5321 §4.5.3.1.10: past max_recipients (100) each RCPT gets 452 4.5.3 and the client
    # sends it again later; 1000 of them in a transaction are tolerated (Postfix's
    # smtpd_recipient_overshoot_limit), each further one is an error: 20 end the session.
    sock = _connect(server)
    rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(1200))
    sock.sendall(b"EHLO many.example\r\nMAIL FROM:<a@many.example>\r\n" + rcpts)
    replies = _all_replies(sock)
    sock.close()
    assert replies[3:103] == [b"250 2.1.5 Ok"] * 100
    assert replies[103:1123] == [b"452 4.5.3 Too many recipients"] * 1020
    assert replies[1123:] == [b"421 4.7.0 Too many errors, closing connection"]


JUNK = [b"NOOP", b"RSET", b"VRFY someone", b"HELP", b"EXPN list", b"EHLO again.example"]


@pytest.mark.parametrize("command", JUNK)
def test_a_junk_command_repeated_forever_ends_the_session_with_421(
    server: TunedHato, command: bytes
) -> None:
    # Postfix's smtpd_junk_command_limit: commands that move no mail, 100 (max_junk_commands)
    # since a message was last accepted; the next gets 421 4.7.0 (RFC 5321 §3.8) and a close.
    sock = _connect(server)
    sock.sendall(b"EHLO junk.example\r\n" + (command + b"\r\n") * 150)
    replies = _all_replies(sock)
    sock.close()
    assert replies[0] == b"220 hato.test ESMTP Hato"
    # The EHLO is one of the 100; the 100th repetition of the command is the 101st.
    assert len(replies) == 1 + 100 + 1, replies[-3:]
    assert all(
        not line.startswith((b"4", b"5")) or line.startswith(b"502") for line in replies[1:101]
    )
    assert replies[-1] == b"421 4.7.0 Too many commands without mail, closing connection"


def test_tiny_bdat_chunks_count_as_junk(server: TunedHato) -> None:
    # RFC 3030 sets no minimum chunk size; BDAT 1 a million times is a reply and an event per
    # octet. A chunk under 1024 octets (not LAST) counts as a junk command.
    sock = _connect(server)
    sock.sendall(b"EHLO chunks.example\r\nMAIL FROM:<a@chunks.example>\r\n"
                 b"RCPT TO:<alice@users.test>\r\n" + b"BDAT 1\r\nx" * 150)  # fmt: skip
    replies = _all_replies(sock)
    sock.close()
    assert replies[2:4] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok"]
    # The EHLO is one of the 100: the 100th chunk gets the 421.
    assert replies[4:103] == [b"250 2.0.0 1 octets received"] * 99
    assert replies[103:] == [b"421 4.7.0 Too many commands without mail, closing connection"]


def test_an_accepted_message_starts_the_junk_count_anew(server: TunedHato) -> None:
    sock = _connect(server)
    message = (b"MAIL FROM:<a@friend.example>\r\nRCPT TO:<alice@users.test>\r\nDATA\r\n"
               b"From: a@friend.example\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")  # fmt: skip
    sock.sendall(b"EHLO friend.example\r\n" + b"NOOP\r\n" * 90 + message + b"NOOP\r\n" * 95)
    sock.sendall(b"QUIT\r\n")
    replies = _all_replies(sock)
    sock.close()
    assert replies[-1].startswith(b"221 "), replies[-3:]
    assert replies[-2] == b"250 2.0.0 Ok"
    assert sum(line.startswith(b"250 2.0.0 Ok: queued as") for line in replies) == 1


def test_refused_senders_count_as_errors(server: TunedHato) -> None:
    # A sender of our own domain on port 25 is refused (550 5.7.1), each a look-up and a log
    # line; like Postfix's smtpd_hard_error_limit, max_bad_commands (20) of them without a
    # message accepted end the session with 421 4.7.0.
    sock = _connect(server)
    sock.sendall(b"EHLO spoof.example\r\n" + b"MAIL FROM:<alice@users.test>\r\n" * 40)
    replies = _all_replies(sock)
    sock.close()
    assert replies[2:22] == [replies[2]] * 20 and replies[2].startswith(b"550 5.7.1 "), replies
    assert replies[22:] == [b"421 4.7.0 Too many errors, closing connection"]
