"""The traffic of the filter tests (rspamd, milters): a message from alice@sender.example to
someone@dest.example, the reply to its DATA, the stored header lines, and a listener that
never answers (a filter that hangs)."""

from __future__ import annotations

import smtplib
import socket

from .hato import HatoServer
from .maildir import MARKER_HEADER
from .net import LOOPBACK

RECIPIENT = "someone@dest.example"
SENDER = "alice@sender.example"


def message(marker: str, body: str, subject: str = "lunch") -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{marker}@sender.example>\r\n"
        f"{MARKER_HEADER.decode()}: {marker}\r\n\r\n{body}\r\n"
    ).encode()


def send(server: HatoServer, message: bytes) -> tuple[int, str]:
    """The reply to the end of DATA (code, text)."""
    with smtplib.SMTP(server.host, server.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.mail(SENDER)
        smtp.rcpt(RECIPIENT)
        code, text = smtp.data(message)
    return code, text.decode()


def head(stored: bytes) -> list[bytes]:
    """The header lines of a stored message."""
    return stored.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def silent_listener() -> tuple[socket.socket, int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(16)
    port: int = sock.getsockname()[1]
    return sock, port
