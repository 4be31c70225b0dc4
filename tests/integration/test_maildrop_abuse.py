"""What a local user can put in the maildrop (docs/security.md, 2026-12-08 eighth session),
against the real `hato serve`: with `chmod 0711 DATA_DIR` (docs/operations.md: how every local
user's mail waits there while the server is down) anyone may create entries in the 1733
maildrop. None of them may stop the server, nor its next start; each is refused and removed
(or, a directory with its owner's files in it, passed by), and the mail after them is taken.

The entries are made by root and given to `nobody`, as a local user's would be (the server
takes the owner's uid; the test's Python lives where `nobody` may not run it).
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def hato(workdir: Path) -> Iterator[HatoServer]:
    server = HatoServer(
        workdir / "data", MailSetup(domains=(DomainSetup("example.test", users=("alice",)),))
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _as_nobody(path: Path) -> None:
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=False)


def _wait_text(box: Path, needle: bytes, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in p.read_bytes() for p in maildir.messages(box)):
            return True
        time.sleep(0.05)
    return False


def _drop(drop: Path, name: str, data: bytes) -> None:
    path = drop / name
    path.write_bytes(data)
    _as_nobody(path)


def test_nothing_a_local_user_leaves_in_the_maildrop_stops_the_server(hato: HatoServer) -> None:
    hato.data_dir.chmod(0o711)
    drop = hato.data_dir / "maildrop"
    alice = hato.mailbox("alice", "example.test")
    # A directory (unlink: EISDIR), one with a file of its owner's in it (not removable by
    # the server), a head line nested 60,000 deep (json: RecursionError), a JSON array (no
    # .get), and an address with a lone surrogate (UnicodeEncodeError): each ended
    # `hato serve` before, and each start after it.
    (drop / "a-dir").mkdir()
    _as_nobody(drop / "a-dir")
    (drop / "b-full").mkdir()
    (drop / "b-full" / "x").write_bytes(b"x")
    _as_nobody(drop / "b-full" / "x")
    _as_nobody(drop / "b-full")
    _drop(drop, "c-nested", b"[" * 60000 + b"\n")
    _drop(drop, "d-array", b'["from", "rcpt"]\nSubject: x\r\n\r\nx\r\n')
    _drop(drop, "e-surrogate", b'{"from": "", "rcpt": ["a@\\udcff"]}\nSubject: x\r\n\r\nx\r\n')
    _drop(drop, "f-sender", b'{"from": "\\udcff@x", "rcpt": ["alice"]}\nSubject: x\r\n\r\nx\r\n')
    _drop(drop, "g-good", b'{"from": "", "rcpt": ["alice"]}\nSubject: after the junk\r\n\r\nx\r\n')
    assert _wait_text(alice, b"Subject: after the junk"), hato.log_text()[-3000:]
    assert hato.alive(), hato.log_text()[-3000:]
    for name in ("a-dir", "c-nested", "d-array", "e-surrogate", "f-sender"):
        assert hato.wait_for_log(rf"event=maildrop-refused file={name}\b"), name
        assert not (drop / name).exists(), name
    assert hato.wait_for_log(r"event=maildrop-unremovable file=b-full\b")
    assert "Traceback" not in hato.log_text()
    # The next start takes the maildrop as it is (it stopped there too), and says once that
    # it passes the directory by.
    hato.stop()
    _drop(
        drop, "h-later", b'{"from": "", "rcpt": ["alice"]}\nSubject: after a restart\r\n\r\nx\r\n'
    )
    hato.start()
    assert _wait_text(alice, b"Subject: after a restart")
    assert hato.alive()
    assert "Traceback" not in hato.log_text()


def test_a_user_over_its_limit_has_its_files_passed_by(workdir: Path) -> None:
    """[limits] messages_per_hour = 3 for `nobody`, who leaves 200 files: 3 are taken, the
    next refused for now, and the other 196 wait without being read and judged again at every
    look (each was, every 2 s for the rest of the hour: half a CPU for 5,000 small files)."""
    server = HatoServer(
        workdir / "data",
        MailSetup(domains=(DomainSetup("example.test", users=("alice",)),), messages_per_hour=3),
    )
    server.start()
    try:
        drop = server.data_dir / "maildrop"
        alice = server.mailbox("alice", "example.test")
        for n in range(200):
            head = b'{"from": "", "rcpt": ["alice"]}\n'
            _drop(drop, f"n{n:03d}", head + b"Subject: n%d\r\n\r\nx\r\n" % n)
        assert server.wait_for_log(r"event=maildrop-deferred file=n003 ")
        # root's file, last in the order of names, is taken in a look after nobody's.
        late = drop / ".zzz"
        late.write_bytes(b'{"from": "", "rcpt": ["alice"]}\nSubject: root late\r\n\r\nx\r\n')
        late.rename(drop / "zzz")
        assert _wait_text(alice, b"Subject: root late")
        assert len(maildir.messages(alice)) == 4
        assert server.log_text().count("event=maildrop-deferred ") == 1
        assert len(list(drop.iterdir())) == 197  # they wait for the limit, none is lost
    finally:
        server.stop()
