"""The "this is spam" / "not spam" path of docs/operations.md (issue 17 item 4), end to end: a
real private Dovecot configured by `hato dovecot-config` plus the IMAPSieve recipe exactly as
the documentation prints it (its paths moved into the test's directory), over the Maildir a
real `hato serve` delivered to; moving a message into Junk with an IMAP client trains a real
private rspamd as spam, moving it out trains it as ham.

The Sieve pipe runs as the mailbox owner; here that is `nobody`, who cannot run this venv's
Python (it lives under /root), so the pipe uses the documented rspamc variant."""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import maildir, net
from peers.dovecot_imap import DovecotImap, VmailHato
from peers.net import LOOPBACK
from peers.rspamd import PASSWORD, RspamdServer
from peers.server import USER_PASSWORD

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _recipe() -> tuple[str, str, str, str]:
    """(dovecot.conf addition, learn-spam.sieve, learn-ham.sieve, the rspamc pipe line) as
    docs/operations.md prints them."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Learning:", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
    conf = next(b for b in blocks if "imapsieve_mailbox1_name" in b)
    spam = next(b for b in blocks if 'pipe :copy "learn-spam"' in b)
    ham = next(b for b in blocks if 'pipe :copy "learn-ham"' in b)
    rspamc = re.search(r"`(exec /usr/bin/rspamc [^`]*learn_spam)`", section)
    assert rspamc is not None, "the rspamc variant is gone from docs/operations.md"
    return conf, spam, ham, rspamc.group(1)


@pytest.fixture
def rspamd(workdir: Path) -> Iterator[RspamdServer]:
    net.require_peer("rspamd")
    server = RspamdServer(workdir / "rspamd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hato(workdir: Path, rspamd: RspamdServer) -> Iterator[VmailHato]:
    server = VmailHato(workdir / "data", f'\n[rspamd]\nurl = "{rspamd.url}"\n')
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot(
    hato: VmailHato, rspamd: RspamdServer, workdir: Path, require_peer: Callable[[str], str]
) -> Iterator[DovecotImap]:
    require_peer("dovecot")
    require_peer("sievec")
    here = workdir / "dovecot"
    conf, spam, ham, rspamc = _recipe()
    etc = here / "etc"
    (etc / "sieve").mkdir(parents=True)
    (etc / "sieve-pipe").mkdir()
    (etc / "sieve" / "learn-spam.sieve").write_text(spam)
    (etc / "sieve" / "learn-ham.sieve").write_text(ham)
    (etc / "rspamd-password").write_text(PASSWORD + "\n")
    for kind in ("spam", "ham"):
        line = rspamc.replace("127.0.0.1:11334", f"{LOOPBACK}:{rspamd.controller_port}")
        line = line.replace("/etc/dovecot/", f"{etc}/").replace("learn_spam", f"learn_{kind}")
        pipe = etc / "sieve-pipe" / f"learn-{kind}"
        pipe.write_text(f"#!/bin/sh\n{line}\n")
        pipe.chmod(0o755)
    for path in (workdir, here, etc, *etc.rglob("*")):
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    imap = DovecotImap.for_hato(hato, here, "\n" + conf.replace("/etc/dovecot/", f"{etc}/"))
    imap.start()
    for kind in ("spam", "ham"):
        # As the documentation says: compile the scripts (with this Dovecot's plugins).
        compiled = subprocess.run(
            ["sievec", "-c", str(imap.config), str(etc / "sieve" / f"learn-{kind}.sieve")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert compiled.returncode == 0, compiled.stderr
        compiled_path = etc / "sieve" / f"learn-{kind}.svbin"
        compiled_path.chmod(0o644)
    try:
        yield imap
    finally:
        imap.stop()


def _wait_learned(rspamd: RspamdServer, symbol: str, count: int, dovecot: DovecotImap) -> None:
    deadline = time.monotonic() + 30
    while rspamd.learned().get(symbol, 0) < count:
        assert time.monotonic() < deadline, (
            f"{symbol} not learned: {rspamd.learned()}\n{dovecot.log_text()[-3000:]}"
        )
        time.sleep(0.1)


def test_moving_into_junk_learns_spam_and_out_of_it_learns_ham(
    hato: VmailHato, rspamd: RspamdServer, dovecot: DovecotImap
) -> None:
    words = "\r\n".join(f"lottery{n} winner{n} claim{n}" for n in range(40))
    message = (
        f"From: <a@elsewhere.test>\r\nTo: <alice@example.test>\r\nSubject: you won\r\n"
        f"Message-ID: <sieve-1@elsewhere.test>\r\n{maildir.MARKER_HEADER.decode()}: sieve-1\r\n"
        f"\r\n{words}\r\n"
    ).encode()
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
        smtp.sendmail("a@elsewhere.test", ["alice@example.test"], message)
    maildir.wait_for_marker(hato.mailbox("alice", "example.test"), "sieve-1")
    before = rspamd.learned()

    with imaplib.IMAP4(LOOPBACK, dovecot.port) as client:
        client.login("alice@example.test", USER_PASSWORD)
        assert client.select("INBOX")[0] == "OK"
        # The mail client's "Junk" button: MOVE (RFC 6851) into the Junk folder.
        status, data = client.uid("MOVE", "1:*", "Junk")
        assert status == "OK", data
        _wait_learned(rspamd, "BAYES_SPAM", before["BAYES_SPAM"] + 1, dovecot)
        # "Not junk": back to the inbox.
        assert client.select("Junk")[0] == "OK"
        status, data = client.uid("MOVE", "1:*", "INBOX")
        assert status == "OK", data
        _wait_learned(rspamd, "BAYES_HAM", before["BAYES_HAM"] + 1, dovecot)
