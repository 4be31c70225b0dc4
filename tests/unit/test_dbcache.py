"""The RCPT-time answers of the user and key databases: kept until another process commits."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hato.accounts import UserStore
from hato.boot.dbcache import (
    SETTLE_SECONDS,
    CachedKeys,
    CachedUsers,
    DatabaseStamp,
    StampedCache,
)
from hato.crypto import FailurePolicy
from hato.crypto.keystore import KeyStore
from hato.directory.known import NO_ACCOUNT, KnownMailboxes
from hato.directory.resolver import Local, LocalDomain, RecipientResolver
from hato.model import (
    Address,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    moment,
)

ALICE = Address("alice", "example.org")


def _age(path: Path, seconds: float) -> None:
    """Make the database and its WAL look `seconds` old (as if nothing wrote them lately)."""
    then = time.time() - seconds
    for file in (path, Path(f"{path}-wal")):
        if file.exists():
            os.utime(file, (then, then))


def test_answers_are_kept_while_the_files_stay_the_same(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    _age(db, 60)
    calls: list[str] = []

    def lookup(key: str) -> int:
        calls.append(key)
        return len(calls)

    cache = StampedCache(DatabaseStamp(db), lookup)
    assert cache.get("a") == 1
    assert cache.get("a") == 1 and cache.get("b") == 2
    assert calls == ["a", "b"]

    db.write_bytes(b"xy")  # another process committed: every answer is read again
    _age(db, 60)
    assert cache.get("a") == 3


def test_a_fresh_stamp_is_not_trusted(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")  # written just now: a change in the same clock tick could hide
    calls: list[str] = []

    def lookup(key: str) -> int:
        calls.append(key)
        return len(calls)

    cache = StampedCache(DatabaseStamp(db), lookup)
    cache.get("a")
    cache.get("a")
    assert calls == ["a", "a"]
    later = StampedCache(DatabaseStamp(db), lookup, now=lambda: time.time() + SETTLE_SECONDS + 1)
    later.get("a")
    later.get("a")
    assert calls == ["a", "a", "a"]


def test_a_user_added_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    server_side = UserStore(path)
    cached = CachedUsers(server_side, path)
    assert not cached.exists(ALICE)
    _age(path, 60)
    assert not cached.exists(ALICE)  # now answered from memory

    admin = UserStore(path)  # `hato user add` in its own process
    admin.add(ALICE, "correct horse battery staple")
    admin.close()
    assert cached.exists(ALICE)
    _age(path, 60)
    assert cached.exists(ALICE)

    admin = UserStore(path)
    admin.remove(ALICE)
    admin.close()
    assert not cached.exists(ALICE)
    server_side.close()


def test_a_change_after_answers_were_trusted_is_not_trusted_until_it_has_aged(
    tmp_path: Path,
) -> None:
    db = tmp_path / "users.db"
    db.write_bytes(b"x")
    _age(db, 60)
    calls: list[str] = []

    def lookup(key: str) -> int:
        calls.append(key)
        return len(calls)

    clock = [time.time()]
    cache = StampedCache(DatabaseStamp(db), lookup, now=lambda: clock[0])
    cache.get("a")
    cache.get("a")
    assert calls == ["a"]  # an old stamp: kept

    db.write_bytes(b"xy")  # committed just now: read at once, and again until it has aged
    assert cache.get("a") == 2 and cache.get("a") == 3
    clock[0] = time.time() + SETTLE_SECONDS + 1
    assert cache.get("a") == 4 and cache.get("a") == 4


def test_within_one_step_the_stamp_is_read_once_and_a_change_is_seen_by_the_next_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users.db"
    server_side = UserStore(path)
    cached = CachedUsers(server_side, path)
    _age(path, 60)
    stats: list[str] = []
    real_stat = os.stat

    def counted(name: str) -> os.stat_result:
        stats.append(name)
        return real_stat(name)

    monkeypatch.setattr("hato.boot.dbcache.os.stat", counted)
    assert moment.begin()
    assert not moment.begin()  # nested: the outer step ends it
    bob = Address("bob", "example.org")
    assert not cached.exists(ALICE) and not cached.exists(bob) and not cached.exists(ALICE)
    assert len(stats) == 2  # users.db and its WAL, once for the step's three lookups
    moment.end()

    admin = UserStore(path)  # `hato user add` between two reads of the session
    admin.add(ALICE, "correct horse battery staple")
    admin.close()
    assert moment.begin()
    assert cached.exists(ALICE)  # the next step sees it at once
    moment.end()
    admin = UserStore(path)
    admin.remove(ALICE)
    admin.close()
    assert not cached.exists(ALICE)  # outside a step: every lookup reads the stamp
    server_side.close()


def test_a_key_policy_set_by_another_process_is_seen_by_the_next_step(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    server_side = KeyStore(path)
    cached = CachedKeys(server_side, path)
    before = cached.policy(ALICE)
    _age(path, 60)
    assert moment.begin()
    assert cached.policy(ALICE) is before  # answered from memory
    moment.end()
    other = next(p for p in FailurePolicy if p is not before)

    admin = KeyStore(path)  # `hato key policy` in its own process
    admin.set_policy(ALICE, other)
    admin.close()
    assert moment.begin()
    assert cached.policy(ALICE) is other
    moment.end()
    server_side.close()


class Maildir:
    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        return [Delivered("maildir") for _ in recipients]


def test_a_user_removed_between_rcpt_and_delivery_is_bounced_though_rcpt_kept_the_answer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "users.db"
    server_side = UserStore(path)
    admin = UserStore(path)
    admin.add(ALICE, "correct horse battery staple")
    admin.close()
    _age(path, 60)
    resolver = RecipientResolver([LocalDomain("example.org")], CachedUsers(server_side, path))
    known = KnownMailboxes(Maildir(), resolver)
    message = QueuedMessage("Q1", None, 0.0, "", 1, b"", {}, body=b"x")
    rows = [QueuedRecipient(-1, ALICE, ALICE)]
    assert moment.begin()  # RCPT TO:<alice>: the answer is kept under this stamp
    assert resolver.resolve(ALICE) == Local((ALICE,), ())
    moment.end()
    assert asyncio.run(known.deliver(message, rows)) == [Delivered("maildir")]  # unchanged

    admin = UserStore(path)  # `hato user remove` while the message came (DATA)
    admin.remove(ALICE)
    admin.close()
    assert asyncio.run(known.deliver(message, rows)) == [PermFailed(NO_ACCOUNT)]
    admin = UserStore(path)  # and back: delivered again, even before the stamp has aged
    admin.add(ALICE, "correct horse battery staple")
    admin.close()
    assert asyncio.run(known.deliver(message, rows)) == [Delivered("maildir")]
    server_side.close()
