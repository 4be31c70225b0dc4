"""The database stamps behind inotify (boot/stampwatch.py): no stat(2) while nothing happened,
and every change another process makes seen by the next step, as with a stat pair a step."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hato.accounts import UserStore
from hato.boot import dbcache, stampwatch
from hato.boot.dbcache import CachedKeys, CachedUsers, DatabaseStamp
from hato.boot.stampwatch import IN_Q_OVERFLOW, StampWatch, file_system_type
from hato.crypto import FailurePolicy
from hato.crypto.keystore import KeyStore
from hato.model import Address, moment

ALICE = Address("alice", "example.org")


@pytest.fixture
def watch(tmp_path: Path) -> StampWatch:
    if file_system_type(str(tmp_path)) not in stampwatch.LOCAL_FILE_SYSTEMS:
        pytest.skip("the temporary directory is not on a local file system inotify can watch")
    return StampWatch()


def _age(path: Path, seconds: float = 60) -> None:
    then = time.time() - seconds
    for file in (path, Path(f"{path}-wal")):
        if file.exists():
            os.utime(file, (then, then))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose stamp part is read by stat(2) from now on."""
    stats: list[str] = []
    real_part = dbcache._part

    def counted(name: str) -> tuple[int, int, int] | None:
        stats.append(name)
        return real_part(name)

    monkeypatch.setattr(dbcache, "_part", counted)
    return stats


def _in_step(read: object) -> object:
    assert moment.begin()
    try:
        return read() if callable(read) else None
    finally:
        moment.end()


def _admin(args: str, path: Path) -> None:
    """`hato user` or `hato key` in a process of its own."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom hato.accounts import UserStore\n"
        "from hato.crypto import FailurePolicy\nfrom hato.crypto.keystore import KeyStore\n"
        "from hato.model import Address\n"
        f"path = Path({str(path)!r})\nalice = Address('alice', 'example.org')\n{args}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_nothing_changed_no_stat_and_a_user_added_by_another_process_is_seen_by_the_next_step(
    tmp_path: Path, watch: StampWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users.db"
    server_side = UserStore(path)
    cached = CachedUsers(server_side, path, watch)
    assert not cached.exists(ALICE)  # the store makes its files on first use
    _age(path)
    assert not _in_step(lambda: cached.exists(ALICE))
    stats = _counting(monkeypatch)
    for _ in range(3):
        assert not _in_step(lambda: cached.exists(ALICE))
    assert stats == []  # no event: the stamp read before holds

    _admin("s = UserStore(path); s.add(alice, 'correct horse battery staple'); s.close()", path)
    assert _in_step(lambda: cached.exists(ALICE))  # the next step sees it at once
    assert stats  # read by stat again
    _age(path)
    _admin("s = UserStore(path); s.remove(alice); s.close()", path)
    assert not cached.exists(ALICE)  # outside a step too
    server_side.close()


def test_a_key_policy_set_by_another_process_is_seen_by_the_next_step(
    tmp_path: Path, watch: StampWatch
) -> None:
    path = tmp_path / "keys.db"
    server_side = KeyStore(path)
    cached = CachedKeys(server_side, path, watch)
    cached.policy(ALICE)  # the store makes its files on first use
    before = _in_step(lambda: cached.policy(ALICE))
    _age(path)
    assert _in_step(lambda: cached.policy(ALICE)) is before
    other = next(p for p in FailurePolicy if p is not before)
    _admin(f"s = KeyStore(path); s.set_policy(alice, FailurePolicy.{other.name}); s.close()", path)
    assert _in_step(lambda: cached.policy(ALICE)) is other
    server_side.close()


def test_a_wal_that_appears_and_a_file_renamed_over_the_database_are_seen(
    tmp_path: Path, watch: StampWatch
) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    stamp = DatabaseStamp(db, watch)
    first = stamp.read()
    assert stamp.read() == first
    Path(f"{db}-wal").write_bytes(b"w")  # no watch on a file that was not there: the directory's
    second = stamp.read()
    assert second != first and second[1] is not None
    with open(f"{db}-wal", "ab") as wal:  # a commit: a write to a file there, nothing more
        wal.write(b"v")
    assert stamp.read() != second
    second = stamp.read()
    restored = tmp_path / "restored.db"
    restored.write_bytes(b"a backup")
    os.rename(restored, db)  # `mv backup users.db`: a new inode under the same name
    third = stamp.read()
    assert third != second and third[0] is not None and third[0][0] == restored_ino(db)
    os.utime(db, (1, 1))  # touch: its mtime
    assert stamp.read() != third
    os.unlink(f"{db}-wal")
    assert stamp.read()[1] is None


def restored_ino(path: Path) -> int:
    return os.stat(path).st_ino


def test_lost_events_a_file_system_from_elsewhere_or_a_forked_child_read_by_stat(
    tmp_path: Path, watch: StampWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    stamp = DatabaseStamp(db, watch)
    stamp.read()
    stats = _counting(monkeypatch)
    stamp.read()
    assert stats == []
    watch._event(-1, IN_Q_OVERFLOW, b"")  # the queue overflowed: events were lost
    stamp.read()
    assert len(stats) == 2
    stamp.read()
    assert len(stats) == 2
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    os.rename(tmp_path, moved)  # the directory's watch now follows another name
    os.rename(moved, tmp_path)
    stamp.read()
    stamp.read()
    assert len(stats) == 6  # read by stat from now on

    linked = tmp_path / "linked.db"
    linked.symlink_to(db)  # users.db -> elsewhere: that directory is not the one watched
    symlinked = DatabaseStamp(linked, watch)
    symlinked.read()
    symlinked.read()
    assert len(stats) == 10
    stats[6:] = []

    monkeypatch.setattr(stampwatch, "file_system_type", lambda path: 0x6969)  # NFS
    assert StampWatch().watch(db) is None  # its changes may come from another kernel
    nfs = DatabaseStamp(db, StampWatch())
    nfs.read()
    nfs.read()
    assert len(stats) == 10

    monkeypatch.setattr(stampwatch, "_watch", watch)
    assert stampwatch.process_watch() is watch
    stampwatch._after_fork_in_child()  # what a child made by fork runs
    stamp.read()
    stamp.read()
    assert len(stats) == 14  # the parent's events are not the child's to read
    assert stampwatch.process_watch() is not watch


def test_two_databases_in_one_step_one_read_of_the_events_and_each_change_seen(
    tmp_path: Path, watch: StampWatch
) -> None:
    users, keys = tmp_path / "users.db", tmp_path / "keys.db"
    users.write_bytes(b"u")
    keys.write_bytes(b"k")
    users_stamp, keys_stamp = DatabaseStamp(users, watch), DatabaseStamp(keys, watch)
    before = _in_step(lambda: (users_stamp.read(), keys_stamp.read()))
    with open(keys, "ab") as file:  # `hato key` commits before the step
        file.write(b"2")
    # The users' read takes the events; the keys' read in the same step finds its change.
    after = _in_step(lambda: (users_stamp.read(), keys_stamp.read()))
    assert isinstance(before, tuple) and isinstance(after, tuple)
    assert after[0] == before[0] and after[1] != before[1]
    with open(users, "ab") as file:
        file.write(b"2")
    again = _in_step(lambda: (keys_stamp.read(), users_stamp.read()))  # the other order
    assert isinstance(again, tuple) and again[0] == after[1] and again[1] != after[0]


def test_no_read_of_the_events_while_none_are_queued(
    tmp_path: Path, watch: StampWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    stamp = DatabaseStamp(db, watch)
    before = stamp.read()
    reads: list[int] = []
    real_read = os.read

    def counted(fd: int, size: int) -> bytes:
        reads.append(fd)
        return real_read(fd, size)

    monkeypatch.setattr("hato.boot.stampwatch.os.read", counted)
    for _ in range(3):
        assert stamp.read() == before
    assert reads == []  # FIONREAD said none: no read(2) failing with EAGAIN
    with open(db, "ab") as file:
        file.write(b"2")
    assert stamp.read() != before
    assert len(reads) == 1


def test_a_failed_look_at_the_events_falls_back_to_stat_for_good(
    tmp_path: Path, watch: StampWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    stamp = DatabaseStamp(db, watch)
    stamp.read()
    stats = _counting(monkeypatch)

    def broken(*args: object) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("hato.boot.stampwatch.queued_octets", broken)
    stamp.read()
    stamp.read()
    assert len(stats) == 4

    other = tmp_path / "keys.db"
    other.write_bytes(b"k")
    fresh = StampWatch()
    monkeypatch.undo()
    stamp = DatabaseStamp(other, fresh)
    stamp.read()
    stats = _counting(monkeypatch)
    with open(other, "ab") as file:  # an event is queued: then read(2) fails
        file.write(b"2")
    monkeypatch.setattr("hato.boot.stampwatch.os.read", broken)
    stamp.read()
    stamp.read()
    assert len(stats) == 4


def test_the_look_at_the_events_keeps_the_gil_and_counts_what_is_queued(tmp_path: Path) -> None:
    # FIONREAD never blocks: asked through ctypes.PyDLL, the loop keeps the GIL (fcntl.ioctl
    # lets it go, and on a busy worker the Maildir thread takes it for a while).
    assert stampwatch._IOCTL is not None
    assert stampwatch._IOCTL._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    answer = ctypes.c_int(0)
    try:
        assert libc.inotify_add_watch(fd, os.fsencode(tmp_path), stampwatch.DIR_EVENTS) >= 0
        assert stampwatch.queued_octets(fd, answer) == 0
        (tmp_path / "users.db").write_bytes(b"x")
        queued = stampwatch.queued_octets(fd, answer)
        assert queued > 0
        assert queued == len(os.read(fd, 65536))
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        stampwatch.queued_octets(fd, answer)  # closed: EBADF
