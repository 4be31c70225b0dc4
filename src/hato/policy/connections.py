"""The connection limits of a listener, counted across worker processes (issue 15 item 1).

Theory: with `[server] workers`, every worker accepts on the same sockets, so counting open
connections in each worker's memory let one client hold `max_connections_per_ip` connections
per worker. Here every worker counts its open connections in one table shared by all: the file
DATA_DIR/connections.table, mapped (MAP_SHARED) by every worker. A key is (listener, client),
a client being an IPv4 address or an IPv6 /64 (the caller's key), the listener's total kept
under the client key ``*``; each key has one count per worker. Admitting a connection sums the
client's counts and the listener's total counts of every worker and adds one to this worker's
only when both are under their limits, all under one ``flock`` of the file, so two workers can
never both take the last place. The lock is held for the few microseconds of the table update:
two system calls per admitted connection and two per closed one (the SQLite file used before
cost ~14 fcntl calls per message, its reads and writes, and busy-wait sleeps; issue 15). The
kernel releases the lock of a worker that dies holding it.

The table: open addressing with linear probing over a power of two of slots, each slot holding
its key's bytes (two clients never share a count), the key's hash, and the counts. A key whose
counts are all zero is deleted at once by backward shift (the entries after it in its probe run
move back), so no tombstones build up and every probe run stays intact. The supervisor sizes
the table before it forks (`table_slots`: at most two keys per open connection, so twice the
listeners' `max_connections` and their totals, rounded up to a power of two); past three
quarters full a connection is refused (the caller answers 421 as for a limit; logged
``connection-table-full``), which that sizing makes impossible.

The counts describe open sockets, so they need no durability (no fsync): the supervisor makes
the table anew at start (`reset`) and zeroes a dead worker's counts before it starts the worker
again (`forget_worker`), so connections that died with a worker do not count. The file is opened
without following a link (O_NOFOLLOW): the data directory is the server user's, and the
supervisor (root) works in it as that user (server/privileges.py `acting_as_owner`).

May import hato.model only.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

from hato.model import logfmt

log = logging.getLogger("hato.connections")

CONNECTIONS_TABLE = "connections.table"
OLD_CONNECTIONS_DB = "connections.db"  # the SQLite ledger of earlier versions (unused)
TOTAL = "*"  # the client key of a listener's total (never an IP address)

FILE_MODE = 0o600
MIN_SLOTS = 64
_MAGIC = b"HATOCONN"
_HEADER = struct.Struct("<8sII")  # magic, slots, workers
_USED_AT = _HEADER.size  # the number of keys in the table, a 32-bit int
_HEADER_SIZE = 64
# A slot: the key's hash (4 octets), its length (1; 0: an empty slot), its bytes, the counts.
_HASH = struct.Struct("<I")
_KEY_AT = 4
_KEY_SPACE = 91  # the length octet and up to 90 octets of key
_COUNTS_AT = _KEY_AT + 1 + _KEY_SPACE
# The counts and the number of keys are read as 32-bit ints in place: 4-octet aligned.
assert _USED_AT % 4 == 0 and _HEADER_SIZE % 8 == 0 and _COUNTS_AT % 4 == 0
_LONG = 255  # the length octet of a key longer than 90 octets, kept as its BLAKE2b-256 digest
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class TableFull(Exception):
    """No room for one more key."""


def table_slots(max_connections: Iterable[int]) -> int:
    """Slots for listeners with these `max_connections`: every open connection uses at most
    two keys (its client's and its listener's total, shared), so twice the connections and the
    totals at least, rounded up to a power of two (a table at most half full)."""
    limits = list(max_connections)
    keys = sum(limits) + len(limits)
    slots = MIN_SLOTS
    while slots < 2 * keys:
        slots *= 2
    return slots


def _slot_size(workers: int) -> int:
    return (_COUNTS_AT + 4 * workers + 7) // 8 * 8


@functools.lru_cache(maxsize=4096)
def _key(listener: str, client: str) -> tuple[bytes, int]:
    """The key's stored form (its length octet first) and its hash. Cached: a connection asks
    it twice (claim, drop), and a client comes back (issue 15: ~1 µs a call)."""
    raw = listener.encode() + b"\0" + client.encode()
    if len(raw) < _KEY_SPACE:
        return bytes((len(raw),)) + raw, zlib.crc32(raw)
    return bytes((_LONG,)) + hashlib.blake2b(raw).digest()[:32], zlib.crc32(raw)


def _open_file(path: Path, flags: int) -> int:
    """A descriptor of the regular file `path`, never through a symbolic link (ELOOP), and not
    another name of a file elsewhere (a hard link to a system file)."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EINVAL, "not a regular file with one name", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Table:
    """The mapped table; every method runs under the file's lock."""

    def __init__(self, fd: int, path: Path) -> None:
        head = os.pread(fd, _HEADER.size, 0)
        magic, self.slots, self.workers = _HEADER.unpack(head.ljust(_HEADER.size, b"\0"))
        self.size = _slot_size(self.workers)
        length = _HEADER_SIZE + self.slots * self.size
        if (
            magic != _MAGIC
            or self.slots < 1
            or self.slots & (self.slots - 1)
            or os.fstat(fd).st_size != length
        ):
            raise OSError(errno.EINVAL, "not a connection table of this version", str(path))
        self.mask = self.slots - 1
        self.capacity = self.slots * 3 // 4
        self.map = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The counts and the number of keys as 32-bit ints read and written in place by index
        # (issue 15: a struct unpack and a pack per count cost ~9 % of the instructions of a
        # claim and its drop). Native byte order: the file lives only while the server runs,
        # on this machine.
        self.ints = memoryview(self.map).cast("i")
        self.stride = self.size // 4  # ints per slot
        self.counts_at = (_HEADER_SIZE + _COUNTS_AT) // 4  # slot 0's first count

    def close(self) -> None:
        self.ints.release()  # the map cannot close while a view of it is held
        self.map.close()

    def find(self, entry: bytes, hashed: int) -> tuple[int, bool]:
        """The slot of `entry`, or the empty slot that ends its probe run (False)."""
        i, count = self.lookup(entry, hashed)
        return i, count >= 0

    def lookup(self, entry: bytes, hashed: int) -> tuple[int, int]:
        """`find` and `total` in one (issue 15: the calls of a claim and its drop): the slot of
        `entry` and its total count, or the empty slot that ends its probe run and -1."""
        m, size, mask, end = self.map, self.size, self.mask, _KEY_AT + len(entry)
        i = hashed & mask
        for _ in range(self.slots):  # never all: a quarter of the slots stays empty
            at = _HEADER_SIZE + i * size
            if not m[at + _KEY_AT]:
                return i, -1
            if m[at + _KEY_AT : at + end] == entry:
                first = self.counts_at + i * self.stride
                return i, sum(self.ints[first : first + self.workers])
            i = (i + 1) & mask
        raise TableFull

    def total(self, i: int) -> int:
        first = self.counts_at + i * self.stride
        return sum(self.ints[first : first + self.workers])

    def used(self) -> int:
        return self.ints[_USED_AT // 4]

    def slot_of(self, entry: bytes, hashed: int) -> int:
        """The slot of `entry`, made if need be (the caller made sure there is room)."""
        i, found = self.find(entry, hashed)
        if found:
            return i
        used = self.used()
        at = _HEADER_SIZE + i * self.size
        _HASH.pack_into(self.map, at, hashed)
        self.map[at + _KEY_AT : at + _KEY_AT + len(entry)] = entry
        self.ints[_USED_AT // 4] = used + 1
        return i

    def bump(self, i: int, worker: int, step: int) -> None:
        """Add `step` to `worker`'s count of slot `i` (never below 0)."""
        at = self.counts_at + i * self.stride + worker
        self.ints[at] = max(0, self.ints[at] + step)

    def delete(self, i: int) -> None:
        """Empty slot `i`; the entries after it in its probe run move back (backward shift
        deletion: an entry moves to the hole when the hole lies between its home slot and
        where it is), so every key stays reachable from its home slot with no empty between."""
        m, size, mask = self.map, self.size, self.mask
        j = i
        while True:
            j = (j + 1) & mask
            at = _HEADER_SIZE + j * size
            if not m[at + _KEY_AT]:
                break
            home = _HASH.unpack_from(m, at)[0] & mask
            if (j - home) & mask >= (j - i) & mask:
                hole = _HEADER_SIZE + i * size
                m[hole : hole + size] = m[at : at + size]
                i = j
        hole = _HEADER_SIZE + i * size
        m[hole : hole + size] = bytes(size)
        self.ints[_USED_AT // 4] = self.used() - 1

    def forget(self, worker: int) -> None:
        """Zero `worker`'s counts; keys with no count left are deleted (the table is rebuilt:
        a rare event, a worker's death). A worker killed in the middle of a deletion may have
        left a key twice (copied back, not yet emptied where it was): it is kept once."""
        m, size = self.map, self.size
        live: dict[bytes, bytes] = {}
        for i in range(self.slots):
            at = _HEADER_SIZE + i * size
            if m[at + _KEY_AT]:
                self.ints[self.counts_at + i * self.stride + worker] = 0
                if self.total(i):
                    live[m[at + _KEY_AT : at + _COUNTS_AT]] = m[at : at + size]
        m[_HEADER_SIZE:] = bytes(self.slots * size)
        for slot in live.values():
            i = _HASH.unpack_from(slot)[0] & self.mask
            while m[_HEADER_SIZE + i * size + _KEY_AT]:
                i = (i + 1) & self.mask
            m[_HEADER_SIZE + i * size : _HEADER_SIZE + (i + 1) * size] = slot
        self.ints[_USED_AT // 4] = len(live)


def reset(path: Path, *, slots: int, workers: int) -> None:
    """At the supervisor's start, before any worker: a table of `slots` slots (a power of two,
    `table_slots`) for `workers` workers, with no connection open."""
    if slots < 1 or slots & (slots - 1) or workers < 1:
        raise ValueError(f"a table of {slots} slots for {workers} workers")
    fd = _open_file(path, _OPEN_FLAGS | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)  # every count zero (the file reads as zeros: no page is written)
        os.ftruncate(fd, _HEADER_SIZE + slots * _slot_size(workers))
        os.pwrite(fd, _HEADER.pack(_MAGIC, slots, workers), 0)
    finally:
        os.close(fd)


def forget_worker(path: Path, worker: int) -> None:
    """A worker died: its connections died with it."""
    fd = _open_file(path, _OPEN_FLAGS)
    try:
        table = _Table(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            table.forget(worker)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            table.close()
    finally:
        os.close(fd)


class ConnectionLedger:
    """One worker's view of the shared counts; its methods run on the event loop (each a few
    microseconds under the file's lock)."""

    def __init__(self, path: Path, worker: int) -> None:
        self._fd = _open_file(path, _OPEN_FLAGS)
        try:
            self._table = _Table(self._fd, path)
        except BaseException:
            os.close(self._fd)
            raise
        if not 0 <= worker < self._table.workers:
            self.close()
            raise ValueError(f"worker {worker} of a table for {self._table.workers}")
        self._worker = worker
        self._totals: dict[str, tuple[bytes, int]] = {}

    def close(self) -> None:
        self._table.close()
        os.close(self._fd)

    def claim(self, listener: str, client: str, max_total: int, max_per_client: int) -> bool:
        """Count one more connection of `client` if the listener and the client are both
        under their limits; False (nothing counted) otherwise, or when the table is full."""
        total = self._totals.get(listener) or self._total_key(listener)
        mine = _key(listener, client)
        table = self._table
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            t, t_count = table.lookup(*total)  # -1: not in the table
            c, c_count = table.lookup(*mine)
            if t_count >= max_total or c_count >= max_per_client:
                return False
            if table.used() + (t_count < 0) + (c_count < 0) > table.capacity:
                raise TableFull
            # An insertion moves no entry: a slot found stays; one not found is looked up
            # again (the first insertion may have taken the second's empty slot).
            if t_count < 0:
                t = table.slot_of(*total)
            if c_count < 0:
                c = table.slot_of(*mine)
            ints, base, stride = table.ints, table.counts_at + self._worker, table.stride
            ints[base + t * stride] += 1
            ints[base + c * stride] += 1
            return True
        except TableFull:
            self._full(listener, client)
            return False
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def add(self, listener: str, client: str) -> None:
        """Count a connection whatever the limits (one already admitted elsewhere)."""
        total, mine = self._total_key(listener), _key(listener, client)
        table = self._table
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            t, t_found = table.find(*total)
            c, c_found = table.find(*mine)
            # Past the three quarters too (it cannot refuse), leaving one slot empty.
            if table.used() + (not t_found) + (not c_found) >= table.slots:
                raise TableFull
            table.bump(t if t_found else table.slot_of(*total), self._worker, 1)
            table.bump(c if c_found else table.slot_of(*mine), self._worker, 1)
        except TableFull:
            self._full(listener, client)  # not counted: its drop leaves the counts one low
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def drop(self, listener: str, client: str) -> None:
        """A connection counted by this worker closed."""
        mine = _key(listener, client)
        total = self._totals.get(listener) or self._total_key(listener)
        table = self._table
        ints, base, stride = table.ints, table.counts_at + self._worker, table.stride
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for entry, hashed in (mine, total):  # the client's first: its deletion may move
                i, count = table.lookup(entry, hashed)  # the total's entry
                if count < 0:
                    continue
                at = base + i * stride
                own = ints[at]
                if own > 0:  # never below 0
                    ints[at] = own - 1
                    count -= 1
                if not count:
                    table.delete(i)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _total_key(self, listener: str) -> tuple[bytes, int]:
        key = self._totals.get(listener)
        if key is None:
            key = self._totals[listener] = _key(listener, TOTAL)
        return key

    def _full(self, listener: str, client: str) -> None:
        log.error(
            logfmt(
                "connection-table-full",
                listener=listener,
                client=client,
                slots=self._table.slots,
                used=self._table.used(),
            )
        )
