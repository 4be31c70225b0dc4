"""The connection limits of a listener, counted across worker processes (issue 15 item 1).

Theory: with `[server] workers`, every worker accepts on the same mx sockets, so counting open
connections in each worker's memory let one client hold `max_connections_per_ip` connections
per worker. Here every worker counts its open connections in one SQLite file in the data
directory, one row per (listener, client, worker); admitting a connection is one
``BEGIN IMMEDIATE`` transaction that sums the client's rows and the listener's total rows of
every worker and adds one to this worker's only when both are under their limits, so two
workers can never both take the last place. A client is an IPv4 address or an IPv6 /64 (the
caller's key); the listener's total is kept under the client key ``*``.

The counts describe open sockets, so they need no durability: ``synchronous = OFF`` (no fsync),
and the supervisor empties the table at start (`reset`) and drops a dead worker's rows before
it starts the worker again (`forget_worker`), so connections that died with a worker do not
count.

May import hato.model only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONNECTIONS_DB = "connections.db"
TOTAL = "*"  # the client key of a listener's total (never an IP address)

_BUSY_TIMEOUT = 2.0  # seconds a worker waits for a sibling's (microseconds long) transaction
_SCHEMA = """
CREATE TABLE IF NOT EXISTS open_connections (
    listener TEXT NOT NULL,
    client TEXT NOT NULL,          -- an IPv4 address, an IPv6 /64, or "*" for the total
    worker INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (listener, client, worker)
) WITHOUT ROWID;
"""


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    db.executescript(_SCHEMA)
    return db


def reset(path: Path) -> None:
    """At the supervisor's start, before any worker: no connection is open."""
    db = _open(path)
    try:
        db.execute("DELETE FROM open_connections")
    finally:
        db.close()


def forget_worker(path: Path, worker: int) -> None:
    """A worker died: its connections died with it."""
    db = _open(path)
    try:
        db.execute("DELETE FROM open_connections WHERE worker = ?", (worker,))
    finally:
        db.close()


class ConnectionLedger:
    """One worker's view of the shared counts; its methods run on the event loop (each a few
    microseconds of SQLite, as the screen's connection rate is)."""

    def __init__(self, path: Path, worker: int) -> None:
        self._db = _open(path)
        self._worker = worker

    def close(self) -> None:
        self._db.close()

    def claim(self, listener: str, client: str, max_total: int, max_per_client: int) -> bool:
        """Count one more connection of `client` if the listener and the client are both
        under their limits; False (nothing counted) otherwise."""
        with self._immediate():
            total = self._sum(listener, TOTAL)
            mine = self._sum(listener, client)
            if total >= max_total or mine >= max_per_client:
                return False
            self._add(listener, client, 1)
            self._add(listener, TOTAL, 1)
            return True

    def add(self, listener: str, client: str) -> None:
        """Count a connection whatever the limits (one already admitted elsewhere)."""
        with self._immediate():
            self._add(listener, client, 1)
            self._add(listener, TOTAL, 1)

    def drop(self, listener: str, client: str) -> None:
        """A connection counted by this worker closed."""
        with self._immediate() as db:
            for key in (client, TOTAL):
                db.execute(
                    "UPDATE open_connections SET count = count - 1 "
                    "WHERE listener = ? AND client = ? AND worker = ?",
                    (listener, key, self._worker),
                )
                db.execute(
                    "DELETE FROM open_connections "
                    "WHERE listener = ? AND client = ? AND worker = ? AND count <= 0",
                    (listener, key, self._worker),
                )

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One transaction that holds the write lock from its start (reads included)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _sum(self, listener: str, client: str) -> int:
        row = self._db.execute(
            "SELECT coalesce(sum(count), 0) FROM open_connections "
            "WHERE listener = ? AND client = ?",
            (listener, client),
        ).fetchone()
        return int(row[0])

    def _add(self, listener: str, client: str, count: int) -> None:
        self._db.execute(
            "INSERT INTO open_connections (listener, client, worker, count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (listener, client, worker) DO UPDATE SET count = count + excluded.count",
            (listener, client, self._worker, count),
        )
