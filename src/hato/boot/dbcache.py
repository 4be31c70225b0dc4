"""Answers from the user and key databases, remembered until the database file changes.

Every RCPT asks the user database whether the mailbox is an account and the key database
whether its owner has a key (issue 6): two SQLite read transactions (file locks and page checks
each, ~20 us) for answers that change only when an admin runs `hato user` or `hato key`, from
another process. So the answers are kept, and each lookup first compares the database's
stamp, the (inode, size, mtime) of the file and of its WAL, with the one the answers were
read under: two stat(2) calls. Any commit by any process appends to the WAL or rewrites the
file, so it changes the stamp and the answers are dropped. File times are coarse (a clock
tick), so a stamp whose newest time is under two seconds old is not trusted: until it has
aged, every lookup reads the database (a change in the same tick could hide in it). Within one
step of the session (the commands of one read, model/moment.py) the stamp is read once.

Part of the composition root (May import every room).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Hashable
from pathlib import Path
from typing import Generic, TypeVar, cast

from hato.boot.stampwatch import StampWatch
from hato.crypto import FailurePolicy, KeyLookup, PublicKey
from hato.model import Address, UserDirectory, moment

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A stamp younger than this may not show a change made in the same clock tick.
SETTLE_SECONDS = 2.0
MAX_ENTRIES = 16384  # past this the answers are dropped and gathered again

Stamp = tuple[tuple[int, int, int] | None, ...]


class DatabaseStamp:
    """What changes whenever an SQLite database (rollback or WAL journal) commits. With
    `watch` (boot/stampwatch.py), the stat pair is skipped while no event says a file of the
    database changed since it was last read."""

    def __init__(self, path: Path, watch: StampWatch | None = None) -> None:
        self._paths = (str(path), f"{path}-wal")
        self._watch = watch
        self._watched = watch.watch(path) if watch is not None else None
        self._last: Stamp | None = None
        self._lock = threading.Lock()  # one thread's rearm and stat pair at a time

    def read(self) -> Stamp:
        step = moment.memo()
        if step is None:
            return self._read(drain=True)
        stamp = step.get(self._paths)  # by file: every cache of one database shares it
        if stamp is None:
            # One read of the watch's events a step: a change during the step is the next's.
            drain = self._watch not in step
            stamp = step[self._paths] = self._read(drain=drain)
            if self._watched is not None:
                step[self._watch] = True  # read by `watch.changed` just now
        return cast(Stamp, stamp)

    def _read(self, *, drain: bool) -> Stamp:
        watch, watched = self._watch, self._watched
        if watch is None or watched is None:
            return (_part(self._paths[0]), _part(self._paths[1]))
        with self._lock:
            changed = watch.changed(watched, drain=drain)  # the events read, first
            if self._last is not None and not changed:
                return self._last
            watch.rearm(watched)  # before the stat pair: a change after it is an event
            self._last = (_part(self._paths[0]), _part(self._paths[1]))
            return self._last


_watched_stamps: dict[tuple[str, int], DatabaseStamp] = {}


def _stamp_of(path: Path, watch: StampWatch | None) -> DatabaseStamp:
    """The stamp of `path`; with a watch, one per file for the process (a reload's caches
    share it, and its watch is not added again)."""
    if watch is None:
        return DatabaseStamp(path)
    key = (str(path), id(watch))
    stamp = _watched_stamps.get(key)
    if stamp is None:
        stamp = _watched_stamps[key] = DatabaseStamp(path, watch)
    return stamp


def _part(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class StampedCache(Generic[K, V]):
    """`lookup(key)`'s answers, valid while the database's stamp stays what it was."""

    def __init__(
        self,
        stamp: DatabaseStamp,
        lookup: Callable[[K], V],
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._stamp = stamp
        self._lookup = lookup
        self._now = now
        self._seen: Stamp | None = None
        self._trusted_from = 0.0  # when the stamp seen is old enough to trust (SETTLE_SECONDS)
        self._values: dict[K, V] = {}

    def generation(self) -> Stamp | None:
        """The stamp the kept answers hold under, while it is old enough to trust; None when
        it is not (every lookup reads the database). Equal tokens: the same answers."""
        stamp = self._stamp.read()
        if stamp != self._seen:
            self._values.clear()
            self._seen = stamp
            # Once per stamp, not per lookup: the time its newest part is SETTLE_SECONDS old.
            newest = max((part[2] for part in stamp if part is not None), default=0)
            self._trusted_from = newest / 1e9 + SETTLE_SECONDS
        return stamp if self._now() >= self._trusted_from else None

    def get(self, key: K) -> V:
        if self.generation() is None:
            return self._lookup(key)  # too fresh to trust: read, do not keep
        try:
            return self._values[key]
        except KeyError:
            pass
        value = self._lookup(key)
        if len(self._values) >= MAX_ENTRIES:
            self._values.clear()
        self._values[key] = value
        return value


class CachedUsers:
    """A `UserDirectory` in front of the user database at `path`."""

    def __init__(self, users: UserDirectory, path: Path, watch: StampWatch | None = None) -> None:
        self._exists = StampedCache(_stamp_of(path, watch), users.exists)

    def exists(self, address: Address) -> bool:
        return self._exists.get(address)

    def generation(self) -> object | None:
        """A token that stays equal while every `exists` answer stays the same (the database
        unchanged, its stamp old enough to trust); None when that cannot be told."""
        return self._exists.generation()


class CachedKeys:
    """A `KeyIndex` in front of the key database at `path`."""

    def __init__(self, keys: KeyLookup, path: Path, watch: StampWatch | None = None) -> None:
        stamp = _stamp_of(path, watch)
        self._get = StampedCache(stamp, keys.get)
        self._policy = StampedCache(stamp, keys.policy)

    def get(self, address: Address) -> PublicKey | None:
        return self._get.get(address)

    def policy(self, address: Address) -> FailurePolicy:
        return self._policy.get(address)

    def with_keys(self, addresses: Collection[Address]) -> set[Address]:
        """By the kept answers (a "no key" is kept here too: the file's stamp tells a change)."""
        return {address for address in addresses if self._get.get(address) is not None}
