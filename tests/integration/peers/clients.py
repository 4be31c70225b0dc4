"""Running the Debian client peers (swaks, msmtp) and reading what they report, and the raw
submission sessions (RFC 8314 implicit TLS, RFC 4954 AUTH) many submission tests open.

The helpers return what the client printed or the server answered; the tests decide what must
be in it.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

from .hato import HatoServer
from .maildir import MARKER_HEADER
from .net import RawSession
from .server import USER_PASSWORD
from .tls import TestCA


def message(sender: str, to: str, marker: str, body: str = "Hello.\r\n") -> bytes:
    """A small RFC 5322 message with a From: of `sender` and the test marker header."""
    return (
        (
            f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: submission {marker}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{marker}@client.test>\r\n"
        ).encode()
        + MARKER_HEADER
        + f": {marker}\r\n\r\n{body}".encode()
    )


def swaks(binary: str, host: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks with our EHLO name; `args` say the rest (--tls, --auth, --from, ...)."""
    return subprocess.run(
        [binary, "--server", f"{host}:{port}", "--helo", "client.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def swaks_tls(ca: Path) -> tuple[str, ...]:
    """swaks options that check the server's certificate against the test CA."""
    return ("--tls-verify", "--tls-ca-path", str(ca))


def swaks_replies(output: str) -> list[str]:
    """Every server reply line swaks printed: "<-" plain, "<~" over TLS, "*" marks an error."""
    return re.findall(r"^<[-~]\*? +(.*)$", output, re.MULTILINE)


def swaks_errors(output: str) -> list[str]:
    """Only the replies swaks took for errors ("<**" plain, "<~*" over TLS)."""
    return re.findall(r"^<(?:\*\*|~\*) +(.*)$", output, re.MULTILINE)


def swaks_tls_replies(output: str) -> list[str]:
    """The replies that came over TLS ("<~" lines)."""
    return re.findall(r"^<~\*? +(.*)$", output, re.MULTILINE)


def msmtp(
    binary: str,
    host: str,
    port: int,
    ca: Path,
    user: str,
    password: str,
    sender: str,
    recipients: list[str],
    body: bytes,
    *options: str,
) -> subprocess.CompletedProcess[str]:
    """msmtp with no configuration file, TLS checked against `ca`, the message on stdin."""
    done = subprocess.run(
        [
            binary,
            "--file=/dev/null",
            f"--host={host}",
            f"--port={port}",
            "--tls=on",
            f"--tls-trust-file={ca}",
            f"--user={user}",
            # --passwordeval runs a shell command; printf keeps the password off argv parsing.
            f"--passwordeval=printf '%s' '{password}'",
            f"--from={sender}",
            "--debug",
            *options,
            "--",
            *recipients,
        ],
        input=body.decode("utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done


def msmtp_dialog(output: str) -> list[str]:
    """The SMTP dialog msmtp --debug printed: "--> " client lines and "<-- " server lines."""
    return re.findall(r"^(?:-->|<--) .*$", output, re.MULTILINE)


def submissions_session(server: HatoServer, ca: TestCA, source: str | None = None) -> RawSession:
    """A session on the implicit-TLS submissions port (trusting the test CA), greeted and past
    EHLO; `source` is the client's loopback address."""
    session = RawSession(
        server.host, server.submissions_port, tls=ca.client_context(), source=source
    )
    assert session.reply()[0] == 220
    assert session.command(b"EHLO client.test")[0] == 250
    return session


def auth_plain(
    session: RawSession, user: str, password: str = USER_PASSWORD
) -> tuple[int, list[bytes]]:
    """AUTH PLAIN with an initial response (RFC 4616), the server's answer."""
    return session.command(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()))


def logged_in(server: HatoServer, ca: TestCA, user: str) -> RawSession:
    """A submissions session authenticated as `user` (PLAIN, the test password)."""
    session = submissions_session(server, ca)
    assert auth_plain(session, user)[0] == 235
    return session


def enhanced(reply: tuple[int, list[bytes]]) -> tuple[int, bytes]:
    """(the reply code, the enhanced status code of its last line)."""
    code, lines = reply
    return code, lines[-1][4:9]
