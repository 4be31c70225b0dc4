"""Operations end to end (issue 7) against the real `hato serve`: the real `hato-sendmail`
program (a subprocess, as cron or PHP calls it) submits through the server's control socket
into local Maildirs; `hato queue` and `hato status` see mail a peer defers with 451, steer it,
and still work with the server stopped; `hato queue bounce` returns mail to its sender as an
RFC 3464 DSN that lands in the sender's Maildir (live, and queued offline for the next start).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from email.message import Message
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.outbound_scripted import ScriptedPeer, Step
from peers.server import DomainSetup, MailSetup

# What the peer answers every RCPT with: `hato queue show` must name this very text.
GREYLIST = "451 4.7.1 Greylisted by peer.test, come back in 10 minutes"
SENDER = "alice@example.org"


class OpsHato(HatoServer):
    """example.org with the accounts alice and bob (root is alice), and mail for remote.test
    relayed to a scripted peer on loopback."""

    def __init__(self, data_dir: Path, peer_port: int) -> None:
        setup = MailSetup(
            domains=(
                DomainSetup("example.org", users=("alice", "bob"), aliases=(("root", ("alice",)),)),
            )
        )
        super().__init__(data_dir, setup)
        self.peer_port = peer_port

    def _config_text(self) -> str:
        return (
            super()._config_text()
            # The peer listens on loopback: otherwise a mail loop (RFC 5321 §5.1).
            + "\n[delivery]\nallow_loopback = true\nconnect_timeout = 5\nattempt_timeout = 20\n"
            + '\n[[transport]]\ndomain = "remote.test"\n'
            + f'relay = "{LOOPBACK}:{self.peer_port}"\ntls = "none"\n'
        )

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"

    def sendmail(
        self, args: Sequence[str], stdin: bytes, *, env_socket: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        # This file's hato-sendmail finds the server by $HATO_CONTROL_SOCKET unless told not to.
        return super().sendmail(args, stdin, env_socket=env_socket)


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(LOOPBACK, free_port(), [Step(rcpt=GREYLIST)]) as scripted:
        yield scripted


@pytest.fixture
def hato(workdir: Path, peer: ScriptedPeer) -> Iterator[OpsHato]:
    server = OpsHato(workdir / "data", peer.port)
    server.start()
    yield server
    server.stop()


def _wait_messages(root: Path, count: int, timeout: float = 15.0) -> list[Path]:
    found = maildir.wait_for_count(root, count, timeout)
    assert len(found) >= count, f"{len(found)} of {count} messages in {root}"
    return found


def test_cron_and_php_style_sendmail_deliver_to_local_maildirs(hato: OpsHato) -> None:
    # PHP's mail() and cron scripts: `sendmail -t -i`, recipients from the header.
    done = hato.sendmail(
        ["-t", "-i"],
        b"To: root\nBcc: bob@example.org\nSubject: cron output\n\nline one\n.\nline three\n",
    )
    assert done.returncode == 0, done.stderr
    (stored,) = [p.read_bytes() for p in _wait_messages(hato.mailbox("alice", "example.org"), 1)]
    (to_bob,) = [p.read_bytes() for p in _wait_messages(hato.mailbox("bob", "example.org"), 1)]
    assert b"Bcc" not in stored and b"Bcc" not in to_bob
    assert b"Delivered-To: bob@example.org\r\n" in to_bob
    # -i: the lone "." is a line of the message, and LF became CRLF.
    assert stored.endswith(b"\r\n\r\nline one\r\n.\r\nline three\r\n")
    assert b"(Hato, from userid %d)" % os.getuid() in stored
    assert b"\r\nFrom: " in stored and b"\r\nMessage-ID: <" in stored
    # Debian cron's flags, the server found through -C: the full name goes into From.
    cron = hato.sendmail(
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-f", "daemon", "alice"],
        b"Subject: x\n\nhi\n",
        env_socket=False,
    )
    assert cron.returncode == 0, cron.stderr
    paths = _wait_messages(hato.mailbox("alice", "example.org"), 2)
    (msg,) = [p.read_bytes() for p in paths if b"CronDaemon" in p.read_bytes()]
    assert b"From: CronDaemon <daemon@example.org>" in msg
    assert hato.wait_for_log(r"event=delivered .*to=<alice@example\.org>(?s:.*)event=delivered")
    status = hato.hato("status")
    assert "last hour:  3 delivered, 0 deferred, 0 failed" in status.stdout, status.stdout
    # Issue 13: the counts begin at the server's start, and the screen says so.
    assert "(this server, counted since its start " in status.stdout, status.stdout


def test_refused_recipient_exit_code_the_bs_dialog_and_the_server_down(hato: OpsHato) -> None:
    refused = hato.sendmail(["alice", "nobody@example.org"], b"Subject: x\n\nhi\n")
    assert refused.returncode == 67, refused.stderr  # EX_NOUSER: nothing was queued
    assert b"nobody@example.org: 550 5.1.1" in refused.stderr
    dialog = (
        b"EHLO localhost\r\nMAIL FROM:<script@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
        b"DATA\r\nSubject: via -bs\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    done = hato.sendmail(["-bs"], dialog)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("220 hato.test ")
    assert any(line.startswith("250 2.0.0 Ok: queued as ") for line in lines), lines
    assert lines[-1].startswith("221")
    (msg,) = _wait_messages(hato.mailbox("bob", "example.org"), 1)
    assert b"Subject: via -bs" in msg.read_bytes()
    assert maildir.messages(hato.mailbox("alice", "example.org")) == []
    hato.stop()
    assert hato.exit_code() == 0
    # With the server down the message waits in the maildrop (issue 13 item 7) ...
    down = hato.sendmail(["alice"], b"Subject: while stopped\n\nhi\n")
    assert down.returncode == 0, down.stderr
    # ... unless there is no maildrop (no server ever ran there): EX_TEMPFAIL, nothing sent.
    (hato.data_dir / "maildrop").rename(hato.data_dir / "maildrop-away")
    gone = hato.sendmail(["alice"], b"Subject: x\n\nhi\n")
    assert gone.returncode == 75, gone.stderr  # EX_TEMPFAIL
    assert b"not running" in gone.stderr
    (hato.data_dir / "maildrop-away").rename(hato.data_dir / "maildrop")
    hato.start()
    (msg,) = _wait_messages(hato.mailbox("alice", "example.org"), 1)
    assert b"Subject: while stopped" in msg.read_bytes()


def _queued(hato: OpsHato, to: str, marker: str) -> None:
    body = f"Subject: ops {marker}\nX-Hato-Test-Marker: {marker}\n\nbye\n".encode()
    done = hato.sendmail(["-i", "-f", SENDER, to], body)
    assert done.returncode == 0, done.stderr


def _wait_listed(hato: OpsHato, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        listed = hato.hato("queue", "list")
        assert listed.returncode == 0, listed.stderr
        if re.search(pattern, listed.stdout):
            return listed.stdout
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{listed.stdout}"
        time.sleep(0.1)


def _queue_id(listing: str, recipient: str) -> str:
    (line,) = [line for line in listing.splitlines() if f"-> <{recipient}>" in line]
    return line.split()[0].rstrip("*")


def _dsn(path: Path) -> tuple[Message, list[Message]]:
    """A delivered DSN, and its per-recipient blocks (RFC 3464 §2.3)."""
    report = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    payload = report.get_payload()
    assert isinstance(payload, list)
    status = payload[1]
    assert isinstance(status, Message)
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return report, [b for b in blocks[1:] if isinstance(b, Message)]


def test_queue_commands_on_mail_a_peer_defers_running_and_stopped(
    hato: OpsHato, peer: ScriptedPeer
) -> None:
    alice = hato.mailbox("alice", "example.org")
    _queued(hato, "carol@remote.test", "ops-carol")
    _queued(hato, "dave@remote.test", "ops-dave")
    _queued(hato, "erin@remote.test", "ops-erin")
    listing = _wait_listed(hato, r"(?s)(1 attempt\(s\).*){3}")
    carol, dave, erin = (
        _queue_id(listing, f"{who}@remote.test") for who in ("carol", "dave", "erin")
    )
    assert listing.count(f"the last reply was {GREYLIST}; 1 attempt(s), next try in") == 3
    # show names the real reason: the peer's own 451 text.
    shown = hato.hato("queue", "show", carol)
    assert shown.returncode == 0, shown.stderr
    assert f"last reply: {GREYLIST}" in shown.stdout
    assert f"why: the last reply was {GREYLIST}" in shown.stdout
    assert "Subject: ops ops-carol" in shown.stdout and f"sender:    <{SENDER}>" in shown.stdout
    status = hato.hato("status")
    assert "queue:      3 message(s)" in status.stdout, status.stdout
    assert "3 recipient(s) waiting (3 deferred), 0 held" in status.stdout
    # flush: tried again now (the next retry is minutes away), deferred again.
    tried = len(peer.transactions)
    flushed = hato.hato("queue", "flush", carol)
    assert flushed.stdout == "flushed 1 recipient(s) of 1 message(s)\n", flushed
    _wait_listed(hato, r"2 attempt\(s\)")
    assert len(peer.transactions) == tried + 1
    assert hato.hato("queue", "hold", dave).returncode == 0
    assert "held by the administrator" in _wait_listed(hato, "held")

    # bounce, live: the sender gets an RFC 3464 DSN in her Maildir.
    bounced = hato.hato("queue", "bounce", carol)
    assert f"{carol}: removed from the queue" in bounced.stdout, bounced
    (dsn_path,) = _wait_messages(alice, 1)
    report, blocks = _dsn(dsn_path)
    assert SENDER in str(report["To"]) and "MAILER-DAEMON@" in str(report["From"])
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822;carol@remote.test"]
    assert blocks[0]["Action"] == "failed" and blocks[0]["Status"] == "5.0.0"
    assert b"X-Hato-Queue-ID: " + carol.encode() in dsn_path.read_bytes()
    assert b"ops-carol" in dsn_path.read_bytes()  # the original comes back
    assert hato.wait_for_log(rf"event=dsn-queued id={carol} ")
    assert carol not in hato.hato("queue", "list").stdout

    # Stopped: list and show read the store; changes go straight to it (under hato.lock).
    hato.stop()
    listing = hato.hato("queue", "list").stdout
    assert dave in listing and erin in listing and "held by the administrator" in listing
    shown = hato.hato("queue", "show", erin)
    assert f"last reply: {GREYLIST}" in shown.stdout, shown
    assert "server:     not running" in hato.hato("status").stdout
    released = hato.hato("queue", "release", dave)
    assert released.returncode == 0 and "due when it starts" in released.stdout, released
    deleted = hato.hato("queue", "delete", erin)
    assert f"{erin}: removed from the queue" in deleted.stdout, deleted
    bounced = hato.hato("queue", "bounce", "--domain", "remote.test")
    assert f"{dave}: removed from the queue" in bounced.stdout, bounced
    # The offline bounce's DSN waits in the queue for the next start, which delivers it.
    mailq = hato.sendmail(["-bp"], b"")
    assert mailq.returncode == 0 and b"<> -> <alice@example.org>" in mailq.stdout, mailq
    hato.start()
    paths = _wait_messages(alice, 2)
    (second,) = [p for p in paths if p != dsn_path]
    _, blocks = _dsn(second)
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822;dave@remote.test"]
    assert _wait_listed(hato, "Mail queue is empty")
    mailq = hato.sendmail(["-bp"], b"")
    assert mailq.returncode == 0 and mailq.stdout == b"Mail queue is empty\n"
    # erin's message was deleted: gone, no bounce; the peer never accepted anything.
    assert len(maildir.messages(alice)) == 2 and peer.delivered() == []
