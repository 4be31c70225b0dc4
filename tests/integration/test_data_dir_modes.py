"""The data directory's modes on the real server (issue 12, item 14): whatever umask it is
started with and however the directory was made, what holds mail bodies, password hashes and
keys is readable by the server's user alone, and every repair is logged."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from peers.hato import HatoServer
from peers.net import RawSession


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_0755_data_dir_and_its_queue_become_private(tmp_path: Path) -> None:
    """Before: a data dir that already existed 0755 got queue/ 0755 and queue.db (inline
    bodies) and its WAL 0644: every local user could read the mail."""
    data = tmp_path / "data"
    server = HatoServer(data)
    old = os.umask(0o022)  # a usual login shell's umask, inherited by the server
    try:
        data.mkdir(mode=0o755)
        (data / "queue").mkdir(mode=0o755)
        (data / "queue" / "left-behind").write_bytes(b"an old spool file")  # 0644
        server.start()
    finally:
        os.umask(old)
    try:
        with RawSession(server.host, server.port) as session:  # a message into the queue
            assert session.reply()[0] == 220
            assert session.command(b"EHLO client.test")[0] == 250
            assert session.command(b"MAIL FROM:<sender@remote.test>")[0] == 250
            assert session.command(b"RCPT TO:<someone@example.org>")[0] == 250
            assert session.command(b"DATA")[0] == 354
            assert session.command(b"Subject: modes\r\n\r\nbody\r\n.")[0] == 250
        assert server.wait_for_log(r"event=accepted")
        assert _mode(data) == 0o711  # searchable (the way to the maildrop), not readable
        assert _mode(data / "maildrop") == 0o1733
        found: list[Path] = []
        for root, dirs, files in os.walk(data):
            here = Path(root)
            if {"mailboxes", "maildrop"} & set(here.relative_to(data).parts):
                continue  # local delivery's own modes; the maildrop is 1733 on purpose
            for name in dirs:
                found.append(here / name)
                if name != "maildrop":
                    assert _mode(here / name) & 0o077 == 0, (here / name, _mode(here / name))
            for name in files:
                path = here / name
                found.append(path)
                if not path.is_socket():
                    assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
        names = {p.name for p in found}
        assert {"queue", "queue.db", "users.db", "secret", "left-behind"} <= names, names
        log = server.log_text()
        for path, was, now in (
            (data, "0755", "0711"),
            (data / "queue", "0755", "0700"),
            (data / "queue" / "left-behind", "0644", "0600"),
        ):
            line = f"event=permissions-fixed path={path} was={was} now={now}"
            assert line in log, log
    finally:
        server.stop()
