"""swaks (Debian) against the real server: a plain send, PIPELINING, and dialog checks."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable

from peers import maildir
from peers.server import MailServer


def _swaks(swaks: str, server: MailServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [swaks, "--server", f"{server.host}:{server.port}", "--helo", "client.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _replies(output: str) -> list[str]:
    """The server's replies as swaks prints them: "<-" accepted, "<**" an error reply."""
    return [m.group(1) for m in re.finditer(r"^<(?:-|\*\*) +(.*)$", output, re.MULTILINE)]


def _errors(output: str) -> list[str]:
    """Only the error replies ("<**" lines)."""
    return re.findall(r"^<\*\* +(.*)$", output, re.MULTILINE)


def test_plain_send_is_delivered(mx: MailServer, require_peer: Callable[[str], str]) -> None:
    swaks = require_peer("swaks")
    marker = uuid.uuid4().hex
    done = _swaks(
        swaks,
        mx,
        "--from", "swaks@client.test",
        "--to", "erin@example.org",
        "--header", f"{maildir.MARKER_HEADER.decode()}: {marker}",
        "--body", "Sent by swaks.",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _errors(done.stdout) == [], done.stdout
    assert any(r.startswith("250") for r in _replies(done.stdout)), done.stdout
    found = maildir.wait_for_marker(mx.mailbox("erin", "example.org"), marker)
    assert len(found) == 1
    assert b"Sent by swaks." in found[0].read_bytes()


def test_pipelined_send_is_delivered(mx: MailServer, require_peer: Callable[[str], str]) -> None:
    swaks = require_peer("swaks")
    marker = uuid.uuid4().hex
    # RFC 2920: MAIL, RCPT and DATA go in one batch; swaks fails if PIPELINING is not offered.
    done = _swaks(
        swaks,
        mx,
        "--pipeline",
        "--from", "swaks@client.test",
        "--to", "frank@example.org,alice@users.test",
        "--header", f"{maildir.MARKER_HEADER.decode()}: {marker}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for user, domain in (("frank", "example.org"), ("alice", "users.test")):
        found = maildir.wait_for_marker(mx.mailbox(user, domain), marker)
        assert len(found) == 1, f"{user}@{domain}"


def test_unknown_user_is_refused_at_rcpt(
    mx: MailServer, require_peer: Callable[[str], str]
) -> None:
    done = _swaks(
        require_peer("swaks"),
        mx,
        "--quit-after", "RCPT",
        "--from", "swaks@client.test",
        "--to", "nobody@users.test",
    )  # fmt: skip
    assert done.returncode != 0
    errors = _errors(done.stdout)
    assert len(errors) == 1 and errors[0].startswith("550 5.1.1"), done.stdout


def test_relay_is_denied(mx: MailServer, require_peer: Callable[[str], str]) -> None:
    done = _swaks(
        require_peer("swaks"),
        mx,
        "--quit-after", "RCPT",
        "--from", "swaks@client.test",
        "--to", "victim@elsewhere.test",
    )  # fmt: skip
    assert done.returncode != 0
    errors = _errors(done.stdout)
    assert len(errors) == 1 and re.match(r"5\d\d 5\.7\.1", errors[0]), done.stdout
    if mx.name == "hato":
        assert errors[0].startswith("550 5.7.1"), done.stdout
