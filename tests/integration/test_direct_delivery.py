"""Local mail goes into its Maildir before the 250, without a queue row; what cannot be delivered
at once (a broken mailbox) is queued and delivered later; `[queue] direct_local_delivery =
false` puts every message through the queue."""

from __future__ import annotations

import re
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

SETUP = MailSetup(domains=(DomainSetup("example.org", users=("alice", "bob")),))


class QueueHato(HatoServer):
    direct = True

    def _config_text(self) -> str:
        text = super()._config_text()
        if self.direct:
            return text
        return text.replace("[queue]\n", "[queue]\ndirect_local_delivery = false\n", 1)


class QueueFirstHato(QueueHato):
    direct = False


@pytest.fixture
def server(workdir: Path) -> Iterator[QueueHato]:
    hato = QueueHato(workdir / "data", SETUP)
    hato.start()
    yield hato
    hato.stop()


def _send(server: HatoServer, to: list[str], marker: str) -> str:
    """One message; returns the queue id of the 250 reply."""
    body = f"Subject: direct\r\n{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nHello.\r\n"
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("sender@client.test")
        for rcpt in to:
            assert smtp.rcpt(rcpt)[0] == 250
        code, text = smtp.data(body.encode())
    assert code == 250, text
    found = re.search(rb"queued as (\S+)", text)
    assert found, text
    return found.group(1).decode()


def test_local_mail_is_in_the_maildir_when_the_250_comes_and_never_queued(
    server: QueueHato,
) -> None:
    queue_id = _send(server, ["alice@example.org", "bob@example.org"], "direct-1")

    # No waiting: the 250 came after the files were in new/ (and new/ was fsynced).
    for user in ("alice", "bob"):
        found = maildir.find_marker(
            maildir.messages(server.mailbox(user, "example.org")), "direct-1"
        )
        assert len(found) == 1, user
        stored = found[0].read_bytes()
        assert stored.startswith(b"Return-Path: <sender@client.test>\r\n")
        assert f"Delivered-To: {user}@example.org\r\n".encode() in stored
    assert server.wait_for_log(
        rf"event=delivered id={queue_id} to=<alice@example.org> .*path=direct"
    )
    assert f"event=queued id={queue_id}" not in server.log_text()
    assert queue_id not in server.hato("queue", "list").stdout


def test_a_mailbox_that_cannot_take_it_now_gets_it_through_the_queue(server: QueueHato) -> None:
    alice = server.mailbox("alice", "example.org")
    (alice / "new").mkdir(parents=True)
    (alice / "cur").mkdir()
    (alice / "tmp").write_bytes(b"not a directory\n")  # every create in tmp/ fails: ENOTDIR

    queue_id = _send(server, ["alice@example.org", "bob@example.org"], "direct-2")

    # bob's copy went in at once; alice's is in the queue (250 means durable, for her too).
    bob = maildir.find_marker(maildir.messages(server.mailbox("bob", "example.org")), "direct-2")
    assert len(bob) == 1
    assert server.wait_for_log(rf"event=direct-failed id={queue_id} to=<alice@example.org>")
    assert server.wait_for_log(rf"event=queued id={queue_id} size=\d+ nrcpt=1 ")
    listed = server.hato("queue", "list")
    assert queue_id in listed.stdout and "alice@example.org" in listed.stdout, listed

    (alice / "tmp").unlink()
    (alice / "tmp").mkdir()
    flushed = server.hato("queue", "flush", queue_id)
    assert flushed.returncode == 0, flushed
    found = maildir.wait_for_marker(alice, "direct-2")
    assert len(found) == 1
    assert server.wait_for_log(rf"event=delivered id={queue_id} to=<alice@example.org> ")
    # Exactly once, for both.
    assert len(maildir.find_marker(maildir.messages(alice), "direct-2")) == 1
    bob = maildir.find_marker(maildir.messages(server.mailbox("bob", "example.org")), "direct-2")
    assert len(bob) == 1


def test_with_direct_delivery_off_every_message_is_queued_first(workdir: Path) -> None:
    hato = QueueFirstHato(workdir / "data", SETUP)
    hato.start()
    try:
        queue_id = _send(hato, ["alice@example.org"], "direct-3")
        assert hato.wait_for_log(rf"event=queued id={queue_id} ")
        found = maildir.wait_for_marker(hato.mailbox("alice", "example.org"), "direct-3")
        assert len(found) == 1
        assert hato.wait_for_log(rf"event=delivered id={queue_id} to=<alice@example.org> ")
        assert "path=direct" not in hato.log_text()
    finally:
        hato.stop()
        shutil.rmtree(hato.work, ignore_errors=True)
