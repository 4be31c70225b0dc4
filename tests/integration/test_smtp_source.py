"""Postfix's smtp-source as a load client: 2,000 messages over 20 sessions all arrive, once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from peers import maildir
from peers.server import MailServer

MESSAGES = 2000


def test_smtp_source_2000_messages_20_sessions(
    mx: MailServer, require_peer: Callable[[str], str]
) -> None:
    smtp_source = require_peer("smtp-source")
    load = ["-s", "20", "-m", str(MESSAGES), "-l", "10240"]
    envelope = ["-f", "source@client.test", "-t", "load@users.test"]
    done = subprocess.run(
        [smtp_source, *load, *envelope, f"{mx.host}:{mx.port}"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    # smtp-source exits non-zero on any refused command or broken session.
    assert done.returncode == 0, done.stderr[-2000:]
    box = mx.mailbox("load", "users.test")
    found = maildir.wait_for_count(box, MESSAGES, timeout=120)
    assert len(found) == MESSAGES
    # Nothing more arrives later (no duplicates from retries).
    assert len(maildir.wait_for_count(box, MESSAGES + 1, timeout=2)) == MESSAGES
