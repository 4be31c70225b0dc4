"""[limits] max_header_fields end to end: the real `hato serve` refuses a message with more
header fields than configured (552 5.6.0, RFC 5322 §3.6 sets no maximum; docs/security.md),
delivers one within it, and takes a new limit from a SIGHUP without a restart."""

from __future__ import annotations

import dataclasses
import signal
import smtplib
import time
import uuid
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import MailSetup


def _message(fields: int, marker: str) -> bytes:
    """A message of exactly `fields` header fields (From, To, the marker and the rest X-n)."""
    head = [b"From: friend@other.test", b"To: alice@users.test"]
    head += [maildir.MARKER_HEADER + b": " + marker.encode()]
    head += [b"X-N-%d: %d" % (n, n) for n in range(fields - len(head))]
    assert len(head) == fields
    return b"\r\n".join(head) + b"\r\n\r\nbody\r\n"


def _send(server: HatoServer, fields: int) -> tuple[int, bytes | str, str]:
    """The reply to DATA's end for a message of `fields` header fields to alice, on mx."""
    marker = uuid.uuid4().hex
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        try:
            smtp.sendmail("friend@other.test", ["alice@users.test"], _message(fields, marker))
        except smtplib.SMTPDataError as refused:
            return refused.smtp_code, refused.smtp_error, marker
    return 250, b"", marker


def _reload(server: HatoServer, setup: MailSetup) -> None:
    server.setup = setup
    server.config.write_text(server.config_text(), encoding="utf-8")
    assert server.proc is not None
    before = server.log_text().count("event=reloaded")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while server.log_text().count("event=reloaded") <= before:
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.05)


def test_a_configured_field_limit_is_enforced_and_reloaded(tmp_path: Path) -> None:
    setup = MailSetup(max_header_fields=100)
    server = HatoServer(tmp_path / "data", setup)
    server.start()
    try:
        code, text, refused = _send(server, 101)
        assert code == 552 and text == b"5.6.0 Message refused: more than 100 header fields"
        code, _, within = _send(server, 100)
        assert code == 250
        box = server.mailbox("alice", "users.test")
        assert len(maildir.wait_for_marker(box, within)) == 1
        assert server.wait_for_log(r"event=message-refused .*reason=too-many-header-fields")

        # SIGHUP: the next message is judged by the new limit, no restart.
        _reload(server, dataclasses.replace(setup, max_header_fields=200))
        code, _, raised = _send(server, 150)
        assert code == 250, server.log_text()[-2000:]
        assert len(maildir.wait_for_marker(box, raised)) == 1
        code, text, _ = _send(server, 201)
        assert code == 552 and text == b"5.6.0 Message refused: more than 200 header fields"
        # The refused message never arrived (the later ones did, so it would have by now).
        assert maildir.find_marker(maildir.messages(box), refused) == []
    finally:
        server.stop()
