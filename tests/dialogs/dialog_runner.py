"""Scripted SMTP dialogs: a tiny format, a parser and a runner against the sans-IO core.

Format (one scenario per file, tests/dialogs/scripts/*.dialog):

    # a comment; blank lines are ignored
    % max_recipients=2        server settings (int, true/false, a,b tuple, PLAIN, = 1-tuple)
    C: EHLO client.example    the client sends this line + CRLF
    X: a\\nb\\r\\n              raw bytes (escapes \\r \\n \\\\ \\xNN), no CRLF added
    S: 250 2.1.0 Ok           the next reply line starts with this text
    S: 250                    a bare 3-digit code matches one whole reply (all its lines)
    S: (closed)               the server has closed the connection

Consecutive C:/X: lines go out in one write (pipelining); S: lines then match the replies
in order, and at the end nothing may be left unmatched. The format assumes nothing about
the server but its replies, so the same scripts can run against a live server (settings
from `%` lines then describe how that server must be configured).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hato.smtp import Event, MessageEnd
from kit.smtp_core import Driver


class DialogError(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Expect:
    text: str
    line_no: int


@dataclass(frozen=True, slots=True)
class ExpectClosed:
    line_no: int


Step = Send | Expect | ExpectClosed


@dataclass
class Dialog:
    settings: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)


def _setting_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.isdigit():
        return int(text)
    if "," in text:
        return tuple(part for part in text.split(",") if part)
    return text


def parse_dialog(text: str) -> Dialog:
    dialog = Dialog()
    pending = b""
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        tag, rest = line[:2], line[3:] if line[2:3] == " " else line[2:]
        if tag == "C:":
            pending += rest.encode("utf-8") + b"\r\n"
            continue
        if tag == "X:":
            pending += codecs.escape_decode(rest.encode("utf-8"))[0]
            continue
        if pending:
            dialog.steps.append(Send(pending))
            pending = b""
        if tag == "S:":
            step: Step = ExpectClosed(line_no) if rest == "(closed)" else Expect(rest, line_no)
            dialog.steps.append(step)
        elif line.startswith("%"):
            key, _, value = line[1:].strip().partition("=")
            dialog.settings[key.strip()] = _setting_value(value.strip())
        else:
            raise DialogError(f"line {line_no}: unknown line {line!r}")
    if pending:
        dialog.steps.append(Send(pending))
    return dialog


class CoreServer:
    """Runs a dialog against hato.smtp.ServerConnection through the kit's driver (its test app:
    recipients @example.org accepted, others 550 5.1.1; STARTTLS always succeeds; AUTH PLAIN
    accepts alice:secret), each message accepted as "Ok: queued as TEST<n>"."""

    def __init__(self, settings: dict[str, Any]) -> None:
        options = dict(settings)
        tls_active = bool(options.pop("tls_active", False))
        self.queued = 0
        self.driver = Driver.make(
            greet=False, tls_active=tls_active, decide=self._decide, **options
        )
        self.driver.conn.greet()

    def _decide(self, event: Event) -> str | None:
        if isinstance(event, MessageEnd):
            self.queued += 1
            return f"Ok: queued as TEST{self.queued}"
        return None

    @property
    def closed(self) -> bool:
        return self.driver.closed

    def send(self, data: bytes) -> None:
        if self.closed:
            return  # a live server would have hung up: the bytes go nowhere
        self.driver.conn.receive_data(data)
        self.driver.pump()

    def output(self) -> bytes:
        return self.driver.conn.data_to_send()


def _split_replies(data: bytes) -> list[list[str]]:
    replies: list[list[str]] = []
    current: list[str] = []
    for line in data.decode("utf-8").split("\r\n")[:-1]:
        current.append(line)
        if line[3:4] != "-":
            replies.append(current)
            current = []
    if current:
        replies.append(current)
    return replies


def run_dialog(dialog: Dialog) -> None:
    server = CoreServer(dialog.settings)
    lines: list[str] = []  # received reply lines not matched yet
    for step in dialog.steps:
        if isinstance(step, Send):
            server.send(step.data)
            continue
        for reply in _split_replies(server.output()):
            lines.extend(reply)
        if isinstance(step, ExpectClosed):
            if not server.closed:
                raise DialogError(f"line {step.line_no}: expected the server to close")
            continue
        if not lines:
            raise DialogError(f"line {step.line_no}: expected {step.text!r}, got nothing")
        if len(step.text) == 3 and step.text.isdigit():
            # a bare code matches a whole reply: its continuation lines and its last line
            while lines and lines[0][3:4] == "-" and lines[0].startswith(step.text):
                lines.pop(0)
        got = lines.pop(0)
        if not got.startswith(step.text):
            raise DialogError(f"line {step.line_no}: expected {step.text!r}, got {got!r}")
    lines.extend(line for reply in _split_replies(server.output()) for line in reply)
    if lines:
        raise DialogError(f"unexpected replies at the end: {lines!r}")


def run_file(path: Path) -> None:
    run_dialog(parse_dialog(path.read_text(encoding="utf-8")))
