"""SIGTERM under load (issue 7, service life): the server stops accepting, lets the transactions
in progress finish (a client in the middle of DATA still gets its 250), exits 0, and after a
restart on the same data dir every message answered 250 is delivered exactly once."""

from __future__ import annotations

import signal
import smtplib
import socket
import uuid

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.load import Load
from peers.server import MakeServer

CLIENTS = 6
PER_CLIENT = 40  # a bounded load: at most CLIENTS * PER_CLIENT messages
STOP_AFTER_ACCEPTED = 60
RCPT = "drain@example.org"


def _message(marker: str) -> bytes:
    return (
        f"From: <load@client.test>\r\nTo: <{RCPT}>\r\nSubject: drain\r\n".encode()
        + maildir.MARKER_HEADER
        + b": "
        + marker.encode()
        + b"\r\n\r\n"
        + (b"0123456789abcdef" * 4 + b"\r\n") * 32
    )


class Reader:
    """Replies read off a raw socket (RFC 5321 §4.2: the last line has a space after the code)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def reply(self) -> str:
        lines: list[str] = []
        while True:
            line = self.file.readline()
            if not line:
                return "\n".join(lines) or "(closed)"
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)


def _open_transaction(host: str, port: int, marker: str) -> tuple[socket.socket, Reader]:
    """A client inside DATA: the headers and half of the body sent, the final dot not."""
    sock = socket.create_connection((host, port), timeout=30)
    reader = Reader(sock)
    assert reader.reply().startswith("220")
    for command, code in (
        (b"EHLO slow.client.test", "250"),
        (b"MAIL FROM:<slow@client.test>", "250"),
        (f"RCPT TO:<{RCPT}>".encode(), "250"),
        (b"DATA", "354"),
    ):
        sock.sendall(command + b"\r\n")
        reply = reader.reply()
        assert reply.startswith(code), (command, reply)
    message = _message(marker)
    sock.sendall(message[: len(message) // 2])
    return sock, reader


def _refused(host: str, port: int) -> bool:
    """Whether a new client is turned away: no connection, or closed / 421 at once."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        return True
    with sock:
        try:
            first = sock.recv(512)
        except TimeoutError:
            return False  # taken in and left hanging: not turned away
        except OSError:
            return True  # reset
    return first == b"" or first.startswith(b"421")


def test_sigterm_mid_load_finishes_transactions_and_loses_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server()
    if not isinstance(server, HatoServer):
        pytest.skip("SIGTERM draining is about hato serve")
    assert server.proc is not None
    load = Load(server.host, server.port, "load@client.test", RCPT, _message, PER_CLIENT)
    load.start(CLIENTS)
    assert load.wait_accepted(STOP_AFTER_ACCEPTED), "the load never got going"
    slow_marker = f"slow-{uuid.uuid4().hex}"
    slow, reader = _open_transaction(server.host, server.port, slow_marker)

    server.proc.send_signal(signal.SIGTERM)  # mid-run: the clients are still sending
    assert server.wait_for_log(r"event=stopping"), "no event=stopping after SIGTERM"
    # Stops accepting: while the slow transaction keeps the process alive, nobody new gets in.
    assert server.alive()
    assert _refused(server.host, server.port), "a new connection was served while draining"
    # The transaction in progress finishes: its 250, then 421 and the connection closes.
    message = _message(slow_marker)
    slow.sendall(message[len(message) // 2 :] + b".\r\n")
    done = reader.reply()
    assert done.startswith("250"), done
    after = reader.reply()
    assert after.startswith("421") or after == "(closed)", after
    slow.close()
    server.proc.wait(timeout=60)  # past the 30 s drain (runtime.DRAIN_SECONDS), and a loaded exit
    assert server.exit_code() == 0, server.log_text()[-3000:]
    server.stop()  # already gone: only closes the log

    accepted, attempted = load.halt()
    accepted.add(slow_marker)
    attempted.add(slow_marker)

    server.start()  # same data dir and port
    maildir.assert_each_once(server.mailboxes(), accepted, attempted, timeout=60, settle=1.5)
    # Healthy after the restart: a new message still gets through.
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        assert smtp.sendmail("load@client.test", [RCPT], _message("after")) == {}
