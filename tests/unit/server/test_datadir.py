"""The data directory at start-up: the lock, private modes (issue 12 item 14), the secret."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hato.server.datadir import DataDirError, locked, make_private, server_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_everything_but_the_mailboxes_is_made_private(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    (data / "queue" / "spool").mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "queue").chmod(0o755)
    (data / "queue" / "queue.db").write_bytes(b"inline bodies")
    (data / "queue" / "queue.db-wal").write_bytes(b"more")
    (data / "users.db").write_bytes(b"hashes")
    (data / "users.db").chmod(0o644)
    box = data / "mailboxes" / "example.org" / "alice" / "new"
    box.mkdir(parents=True, mode=0o750)
    (box / "1.msg").write_bytes(b"mail")
    (box / "1.msg").chmod(0o640)
    os.symlink("/etc/passwd", data / "link")
    with caplog.at_level(logging.WARNING, logger="hato"):
        fixed = make_private(data)
    assert _mode(data) == 0o711  # its search bits stay: the way to the maildrop
    assert _mode(data / "queue") == _mode(data / "queue" / "spool") == 0o700
    for name in ("queue/queue.db", "queue/queue.db-wal", "users.db"):
        assert _mode(data / name) == 0o600, name
    assert _mode(box) == 0o750 and _mode(box / "1.msg") == 0o640  # local delivery's own
    assert _mode(Path("/etc/passwd")) == 0o644  # a link is not followed
    assert fixed == 6
    lines = [r.getMessage() for r in caplog.records]
    assert any("event=permissions-fixed" in line and "queue.db " in line + " " for line in lines)
    assert any("was=0644 now=0600" in line for line in lines), lines
    assert make_private(data) == 0  # nothing left to fix, nothing logged


def test_locked_sets_the_umask_makes_the_secret_and_refuses_a_second_server(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    with locked(data):
        assert os.umask(0o077) == 0o077
        secret = server_secret(data)
        assert len(secret) == 32 and _mode(data / "secret") == 0o600
        with pytest.raises(DataDirError) as refused, locked(data):
            pass
        assert "in use by another hato process" in str(refused.value)
    with locked(data):
        assert server_secret(data) == secret  # made once


def test_a_damaged_secret_is_named(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"short")
    with pytest.raises(DataDirError) as damaged:
        server_secret(tmp_path)
    assert "is damaged (5 bytes, not 32); delete it" in str(damaged.value)


def test_the_maildrop_and_a_0711_data_dir_are_left_as_they_are(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    drop = data / "maildrop"
    drop.mkdir(parents=True)
    data.chmod(0o711)  # docs/operations.md: so that local users reach the maildrop
    drop.chmod(0o1733)
    (drop / "from-a-user").write_bytes(b"{}\n")  # 0644: the server must still read it
    assert make_private(data) == 0
    assert _mode(data) == 0o711 and _mode(drop) == 0o1733
    assert _mode(drop / "from-a-user") == 0o644


# Root runs `locked` (and so make_private) in a directory its server's user owns: what that
# user planted there must not make root give away or change a file elsewhere.


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_a_link_in_place_of_the_lock_is_not_given_away(tmp_path: Path) -> None:
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "hato.lock").symlink_to(victim)
    with pytest.raises(DataDirError), locked(data, owner=(65534, 65534)):
        pass
    assert victim.stat().st_uid == 0 and victim.read_text() == "root:x:0:0\n"
    os.unlink(data / "hato.lock")
    os.link(victim, data / "hato.lock")  # another name of it: not given either
    with locked(data, owner=(65534, 65534)):
        pass
    assert victim.stat().st_uid == 0


def test_a_hard_link_to_a_file_elsewhere_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    victim.chmod(0o644)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.link(victim, data / "users.db")
    (data / "elsewhere.db").symlink_to(victim)
    make_private(data)
    assert _mode(victim) == 0o644
