"""Local submission (issue 12 item 6, issue 13 item 7) against the real `hato serve`: the real
hato-sendmail code finds the configured submit_socket, `-t -i root` reaches a person, a local
user may send only as its own or granted addresses and within its limits, the submission
socket bounds connections, and mail given to hato-sendmail while the server is down waits in the
maildrop and is delivered at the next start, with the same checks.

A local user other than root: the test's Python lives under /root, which `nobody` cannot read,
so hato-sendmail runs in a forked child of this process that becomes `nobody` (its modules
imported before the fork): the same code, with the kernel's uid for the server to see.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import os
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.localuser import NOBODY, as_nobody
from peers.server import DomainSetup, MailSetup

# Imported before forking: `nobody` cannot read the interpreter's own files.
from hato.cli import queue as queue_cli
from hato.cli import sendmail as sendmail_cli
from hato.cli import sendmail_site

PRELOADED = (
    queue_cli,
    sendmail_site,
    tomllib,
    email.utils,
    codecs.lookup("utf-8-sig"),
    b"x".decode("utf-8-sig"),
)


class LocalHato(HatoServer):
    def __init__(self, data_dir: Path) -> None:
        setup = MailSetup(domains=(DomainSetup("example.test", users=("alice", "bob")),))
        super().__init__(data_dir, setup)
        self.submit_socket = self.work / "run" / "submit.sock"

    def _config_text(self) -> str:
        text = super()._config_text()
        text = text.replace("[server]\n", f'[server]\nsubmit_socket = "{self.submit_socket}"\n', 1)
        text = text.replace("[limits]\n", "[limits]\nmessages_per_hour = 3\n", 1)
        return text + (
            '\n[local]\npostmaster = "alice@example.test"\n'
            'send_as = { nobody = ["noreply@example.test"] }\n'
        )


@pytest.fixture
def hato(workdir: Path) -> Iterator[LocalHato]:
    server = LocalHato(workdir / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wait_text(box: Path, needle: bytes, timeout: float) -> list[Path]:
    """Poll until a message in `box` contains `needle` (or `timeout` seconds pass)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in maildir.messages(box) if needle in p.read_bytes()]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def sendmail_as_nobody(config: Path, args: list[str], stdin: bytes) -> tuple[int, str]:
    """hato.cli.sendmail.main(["-C", config, *args]) in a child that is `nobody`."""
    code, _, errors = as_nobody(lambda: sendmail_cli.main(["-C", str(config), *args]), stdin)
    return code, errors


def test_local_users_send_only_as_themselves_through_the_configured_socket(
    hato: LocalHato,
) -> None:
    alice = hato.mailbox("alice", "example.test")
    # docs/operations.md's first example: root has no account or alias; it reaches the
    # configured postmaster (alice).
    done = hato.sendmail(["-t", "-i", "root"], b"Subject: backup done\n\nok\n")
    assert done.returncode == 0, done.stderr
    maildir.wait_for_count(alice, 1, 15)
    # nobody cannot use the 0600 control socket: the configured submit_socket takes it.
    code, err = sendmail_as_nobody(
        hato.config, ["-f", "noreply@example.test", "alice"], b"Subject: granted\n\nhi\n"
    )
    assert code == 0, err
    (granted,) = _wait_text(alice, b"Subject: granted", 15)
    assert b"(Hato, from userid %d)" % NOBODY.pw_uid in granted.read_bytes()
    # Issue 12.6: nobody as bob, or with a CEO's From:, is refused; nothing is queued.
    spoof = b"From: ceo@example.test\nSubject: wire the money\n\nnow\n"
    code, err = sendmail_as_nobody(hato.config, ["-f", "noreply@example.test", "bob"], spoof)
    assert code == 69 and "553 5.7.1 From:" in err, (code, err)
    # RFC 5322 §3.6.2, §3.6.6: a Sender or Resent- field of bob's ("bob on behalf of") too.
    for field in (b"Sender: bob@example.test", b"Resent-From: <bob@example.test>"):
        message = b"From: noreply@example.test\n" + field + b"\nSubject: x\n\nnow\n"
        code, err = sendmail_as_nobody(hato.config, ["-f", "noreply@example.test", "bob"], message)
        name = field.split(b":")[0].decode()
        assert code == 69 and f"553 5.7.1 {name}:" in err, (code, err)
    granted_from = b"From: noreply@example.test\n\nx\n"
    code, err = sendmail_as_nobody(hato.config, ["-f", "bob@example.test", "bob"], granted_from)
    assert code == 69 and "553 5.7.1 bob@example.test is not nobody's" in err, (code, err)
    assert hato.wait_for_log(rf"event=local-sender-refused uid={NOBODY.pw_uid} user=nobody")
    assert not maildir.messages(hato.mailbox("bob", "example.test"))
    # Sending limits per Unix user: [limits] messages_per_hour = 3 (one used above).
    for n in range(2):
        code, err = sendmail_as_nobody(
            hato.config, ["-f", "noreply@example.test", "alice"], b"Subject: n%d\n\nx\n" % n
        )
        assert code == 0, err
    code, err = sendmail_as_nobody(
        hato.config, ["-f", "noreply@example.test", "alice"], b"Subject: one too many\n\nx\n"
    )
    assert code == 75 and " 4." in err, (code, err)
    # root is not limited; a big message is streamed to the queue, not held (it arrives whole).
    big = b"".join(b"line %06d of a long report\n" % n for n in range(8000))  # ~220 KiB
    assert hato.sendmail(["alice"], b"Subject: root again\n\n" + big).returncode == 0
    (stored,) = _wait_text(alice, b"root again", 15)
    assert stored.read_bytes().endswith(big.replace(b"\n", b"\r\n"))


def test_the_submission_socket_bounds_connections_per_user(hato: LocalHato) -> None:
    held = []
    try:
        for _ in range(4):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(hato.submit_socket))
            client.sendall(b'{"op":"hello"}\n')
            assert b'"ok":true' in client.recv(4096)
            held.append(client)
        extra = socket.socket(socket.AF_UNIX)
        extra.connect(str(hato.submit_socket))
        answer = extra.makefile("rb").readline()
        extra.close()
        assert json.loads(answer) == {"ok": False, "error": "too many connections; try again later"}
    finally:
        for client in held:
            client.close()


def test_mail_sent_while_the_server_is_down_is_delivered_at_its_start(hato: LocalHato) -> None:
    hato.stop()
    done = hato.sendmail(["-f", "bob@example.test", "alice"], b"Subject: while down\n\nx\n")
    assert done.returncode == 0, done.stderr  # was 75: cron's output lost at every restart
    drop = hato.data_dir / "maildrop"
    assert len([p for p in drop.iterdir() if not p.name.startswith(".")]) == 1
    # A file of nobody's claiming to be bob: the owner decides, and nobody may not be bob.
    forged = drop / "1.1.forged"
    forged.write_bytes(
        b'{"from": "bob@example.test", "rcpt": ["alice"], "uid": 0}\n'
        b"From: bob@example.test\r\nSubject: forged drop\r\n\r\nx\r\n"
    )
    os.chown(forged, NOBODY.pw_uid, NOBODY.pw_gid)
    hato.start()
    (found,) = _wait_text(hato.mailbox("alice", "example.test"), b"while down", 15)
    assert b"(Hato, from userid 0)" in found.read_bytes()
    assert hato.wait_for_log(rf"event=maildrop-refused file=1\.1\.forged uid={NOBODY.pw_uid}")
    assert not list(drop.iterdir())
    assert not _wait_text(hato.mailbox("alice", "example.test"), b"forged", 1)
    # While running too: a file written just before the server came back is taken.
    late = drop / ".2.2.late"
    late.write_bytes(b'{"from": "", "rcpt": ["alice"]}\nSubject: late drop\r\n\r\nx\r\n')
    late.rename(drop / "2.2.late")
    assert _wait_text(hato.mailbox("alice", "example.test"), b"late drop", 15)


def test_reload_applies_postmaster_and_asks_a_restart_for_send_as(hato: LocalHato) -> None:
    """docs/operations.md, Reloading: [local] postmaster is live, send_as needs a restart."""
    text = hato.config.read_text()
    hato.config.write_text(text.replace('postmaster = "alice@example.test"', 'postmaster = "bob"'))
    bad = hato.hato("reload")
    # Not an address: the server refuses the file and keeps what is in force (exit 1).
    assert bad.returncode == 1 and "reload refused" in bad.stderr, bad
    assert "local.postmaster" in bad.stderr, bad
    hato.config.write_text(
        text.replace('postmaster = "alice@example.test"', 'postmaster = "bob@example.test"')
    )
    applied = hato.hato("reload")
    assert applied.returncode == 0 and "local.postmaster" in applied.stdout, applied
    assert hato.sendmail(["root"], b"Subject: to root\n\nx\n").returncode == 0
    assert _wait_text(hato.mailbox("bob", "example.test"), b"to root", 15)
    hato.config.write_text(
        hato.config.read_text().replace('nobody = ["noreply@example.test"]', "nobody = []")
    )
    refused = hato.hato("reload")
    assert refused.returncode == 1 and "local.send_as" in refused.stdout + refused.stderr, refused


class TwoDomainHato(LocalHato):
    """example.test (the first domain) has the account `nobody`, the Unix user's; other.test
    has an account of the same name, another person's, and an alias delivering to the first."""

    def __init__(self, data_dir: Path) -> None:
        HatoServer.__init__(
            self,
            data_dir,
            MailSetup(
                domains=(
                    DomainSetup("example.test", users=("alice", "nobody")),
                    DomainSetup(
                        "other.test",
                        users=("nobody",),
                        aliases=(("help", ("nobody@example.test",)),),
                    ),
                )
            ),
        )
        self.submit_socket = self.work / "run" / "submit.sock"


def test_a_unix_user_is_its_account_in_the_first_domain_only(workdir: Path) -> None:
    """RFC 6409 §6.1: the Unix user `nobody` is nobody@example.test (the first domain, which
    -f and the From hato-sendmail adds default to): it may not send as nobody@other.test, an
    account of the same name in another domain (another person's), in the envelope or in
    From; an alias of other.test that delivers to nobody@example.test is its own."""
    hato = TwoDomainHato(workdir / "data")
    hato.start()
    try:
        message = b"From: %s\nSubject: %s\n\nx\n"
        for sender, header in (
            (b"nobody@other.test", b"nobody@example.test"),
            (b"nobody@example.test", b"nobody@other.test"),
        ):
            code, err = sendmail_as_nobody(
                hato.config, ["-f", sender.decode(), "alice"], message % (header, b"as other")
            )
            assert code == 69 and "553 5.7.1" in err, (code, err)
        for sender in (b"nobody@example.test", b"help@other.test"):
            code, err = sendmail_as_nobody(
                hato.config, ["-f", sender.decode(), "alice"], message % (sender, sender)
            )
            assert code == 0, err
        alice = hato.mailbox("alice", "example.test")
        assert _wait_text(alice, b"Subject: help@other.test", 15)
        assert _wait_text(alice, b"Subject: nobody@example.test", 15)
        assert not _wait_text(alice, b"as other", 1)
    finally:
        hato.stop()


def test_a_local_user_without_a_submit_socket_is_told_what_to_set(workdir: Path) -> None:
    """No [server] submit_socket: nobody may not use the 0600 control socket, nor reach the
    maildrop in the 0700 data directory. It was told "the mail server is not running" while
    the server ran; now it is told why and what the admin sets."""
    server = HatoServer(workdir / "data", MailSetup(domains=(DomainSetup("example.test", True),)))
    server.start()
    try:
        server.data_dir.chmod(0o700)  # as hato makes it (the harness made it 0755)
        submit = server.work / "none" / "submit.sock"  # not /run/hato's, whatever this host has
        server.config.write_text(
            server.config_text().replace("[server]\n", f'[server]\nsubmit_socket = "{submit}"\n', 1)
        )
        code, err = sendmail_as_nobody(server.config, ["root"], b"Subject: x\n\nhi\n")
        assert code == 75, err
        assert "not running" not in err, err
        assert "hato-sendmail: cannot reach the mail server as nobody (" in err, err
        assert "control.sock: Permission denied" in err and "[server] submit_socket" in err, err
    finally:
        server.stop()
