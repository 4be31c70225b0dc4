"""AUTH failure counters, client blocks and known clients in one SQLite file in the data
directory, shared by the worker processes of one server (`[server] workers`, issue 15 item 1):
failures a client spreads over connections that different workers accepted add up to the
same delays and the same block as in one process, and a block holds on every worker.

The same `AuthThrottle` and the same semantics (policy/authlimit.py): only its four tables
move from the process's memory to DATA_DIR/authlimit.db. A key's failure times are one row
(at most its threshold of them, newest last, as the in-memory deque), each table keeps at most
`max_entries` keys, the least recently used going first (counted by triggers, so the bound
costs no scan), and rows whose time has passed are pruned with every failure. Every change
is one ``BEGIN IMMEDIATE`` transaction (policy/ratelimit.py's `Immediate`): two workers'
failures at the same moment both count. Times are the Clock's wall clock (shared by the
processes), so a block outlives a restart of the server, as the sending limits do.

Nothing here needs durability: ``synchronous = OFF`` (no fsync). A crash of the machine may
lose the last counts and blocks, which only gives a guesser its window again; a crash of a
process loses nothing (WAL). The supervisor creates the file (as the data directory's owner,
mode 0600) before the workers start; with one process the throttle stays in memory.

May import hato.model only.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hato.model import Clock
from hato.policy.authlimit import (
    AuthFailure,
    AuthThrottle,
    AuthThrottleSettings,
    _account_key,
    client_key,
)
from hato.policy.ratelimit import Immediate

AUTHLIMIT_DB = "authlimit.db"

_BUSY_TIMEOUT = 10.0  # seconds a worker waits for a sibling's (microseconds long) transaction
_SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (   -- one row per counted key
    kind TEXT NOT NULL,                  -- 'client' (IPv4 address, IPv6 /64) or 'account'
    key TEXT NOT NULL,
    times TEXT NOT NULL,                 -- its failure times, space-separated, newest last
    last REAL NOT NULL,                  -- the newest
    used INTEGER NOT NULL,               -- when last changed: the least recently used go first
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS failures_last ON failures (kind, last);
CREATE INDEX IF NOT EXISTS failures_used ON failures (used);
CREATE TABLE IF NOT EXISTS blocks (
    client TEXT PRIMARY KEY,
    until REAL NOT NULL,
    used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_until ON blocks (until);
CREATE INDEX IF NOT EXISTS blocks_used ON blocks (used);
CREATE TABLE IF NOT EXISTS known (      -- an account's known clients
    client TEXT NOT NULL,
    account TEXT NOT NULL,
    until REAL NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (client, account)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS known_until ON known (until);
CREATE INDEX IF NOT EXISTS known_used ON known (used);
CREATE TABLE IF NOT EXISTS sizes (kind TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO sizes VALUES ('client', 0), ('account', 0), ('block', 0), ('known', 0);
CREATE TRIGGER IF NOT EXISTS failures_in AFTER INSERT ON failures
    BEGIN UPDATE sizes SET n = n + 1 WHERE kind = NEW.kind; END;
CREATE TRIGGER IF NOT EXISTS failures_out AFTER DELETE ON failures
    BEGIN UPDATE sizes SET n = n - 1 WHERE kind = OLD.kind; END;
CREATE TRIGGER IF NOT EXISTS blocks_in AFTER INSERT ON blocks
    BEGIN UPDATE sizes SET n = n + 1 WHERE kind = 'block'; END;
CREATE TRIGGER IF NOT EXISTS blocks_out AFTER DELETE ON blocks
    BEGIN UPDATE sizes SET n = n - 1 WHERE kind = 'block'; END;
CREATE TRIGGER IF NOT EXISTS known_in AFTER INSERT ON known
    BEGIN UPDATE sizes SET n = n + 1 WHERE kind = 'known'; END;
CREATE TRIGGER IF NOT EXISTS known_out AFTER DELETE ON known
    BEGIN UPDATE sizes SET n = n - 1 WHERE kind = 'known'; END;
"""

# Deleting the least recently used key of a table; a row's `used` is its table's next number.
_OLDEST_FAILURES = (
    "DELETE FROM failures WHERE kind = ? AND key ="
    " (SELECT key FROM failures WHERE kind = ? ORDER BY used LIMIT 1)"
)
_OLDEST = {
    "block": "DELETE FROM blocks WHERE client = (SELECT client FROM blocks ORDER BY used LIMIT 1)",
    "known": "DELETE FROM known WHERE (client, account) ="
    " (SELECT client, account FROM known ORDER BY used LIMIT 1)",
}
_NEXT = "(SELECT coalesce(max(used), 0) + 1 FROM {})"


def open_authlimit(path: Path) -> sqlite3.Connection:
    """The throttle's file at `path` (created mode 0600, WAL, no fsync)."""
    if not path.exists():
        path.touch(mode=0o600)
    db = sqlite3.connect(
        str(path), timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")  # counters: losing the last ones is harmless
    db.executescript(_SCHEMA)
    return db


class SqliteAuthThrottle(AuthThrottle):
    """`AuthThrottle` whose state is DATA_DIR/authlimit.db, shared by the workers."""

    def __init__(self, clock: Clock, settings: AuthThrottleSettings | None, path: Path) -> None:
        super().__init__(clock, settings)
        self._db = open_authlimit(path)

    def close(self) -> None:
        self._db.close()

    def _now(self) -> float:
        return self._clock.now()  # the wall clock: the processes share no monotonic one

    def record_failure(self, ip: str, account: str | None) -> AuthFailure:
        with Immediate(self._db):
            failure = super().record_failure(ip, account)
            self._prune(self._now())
            return failure

    def record_success(self, ip: str, account: str | None) -> None:
        client, acct = client_key(ip), _account_key(account)
        with Immediate(self._db):
            self._forget(client)
            if acct:
                self._db.execute(
                    "INSERT INTO known (client, account, until, used)"
                    f" VALUES (?, ?, ?, {_NEXT.format('known')})"
                    " ON CONFLICT (client, account) DO UPDATE SET until = excluded.until,"
                    " used = excluded.used",
                    (client, acct, self._now() + self.settings.trust_time),
                )
                self._evict("known")

    def blocked(self, ip: str) -> bool:
        rows = self._db.execute(
            "SELECT 1 FROM blocks WHERE client = ? AND until > ?", (client_key(ip), self._now())
        ).fetchall()
        return bool(rows)

    def unblock(self, ip: str) -> bool:
        client = client_key(ip)
        with Immediate(self._db):
            self._forget(client)
            return self._db.execute("DELETE FROM blocks WHERE client = ?", (client,)).rowcount > 0

    def blocks(self) -> list[tuple[str, float]]:
        rows = self._db.execute(
            "SELECT client, until FROM blocks WHERE until > ? ORDER BY client", (self._now(),)
        ).fetchall()
        return [(str(client), float(until)) for client, until in rows]

    def _add(self, client: str, account: str, now: float) -> None:
        self._append("client", client, now, self.settings.max_failures)
        if account:
            self._append("account", account, now, self.settings.max_account_failures)

    def _append(self, kind: str, key: str, now: float, threshold: int) -> None:
        """One more failure time of `key`, keeping its newest `threshold` (the deque's maxlen)."""
        times = self._times(kind, key)[-(threshold - 1) :] if threshold > 1 else []
        times.append(now)
        self._db.execute(
            "INSERT INTO failures (kind, key, times, last, used)"
            f" VALUES (?, ?, ?, ?, {_NEXT.format('failures')})"
            " ON CONFLICT (kind, key) DO UPDATE SET times = excluded.times,"
            " last = excluded.last, used = excluded.used",
            (kind, key, " ".join(repr(t) for t in times), now),
        )
        self._evict(kind)

    def _times(self, kind: str, key: str) -> list[float]:
        rows = self._db.execute(
            "SELECT times FROM failures WHERE kind = ? AND key = ?", (kind, key)
        ).fetchall()
        return [float(t) for t in rows[0][0].split()] if rows else []

    def _forget(self, client: str) -> None:
        self._db.execute("DELETE FROM failures WHERE kind = 'client' AND key = ?", (client,))

    def _counts(self, client: str, account: str) -> tuple[int, int]:
        since = self._now() - self.settings.failure_window
        client_n = sum(t > since for t in self._times("client", client))
        account_n = sum(t > since for t in self._times("account", account)) if account else 0
        return client_n, account_n

    def _is_known(self, client: str, account: str) -> bool:
        if not account:
            return False
        rows = self._db.execute(
            "SELECT 1 FROM known WHERE client = ? AND account = ? AND until > ?",
            (client, account, self._now()),
        ).fetchall()
        return bool(rows)

    def _block(self, client: str, until: float) -> None:
        self._db.execute(
            f"INSERT INTO blocks (client, until, used) VALUES (?, ?, {_NEXT.format('blocks')})"
            " ON CONFLICT (client) DO UPDATE SET until = excluded.until, used = excluded.used",
            (client, until),
        )
        self._evict("block")

    def _evict(self, kind: str) -> None:
        """Past `max_entries` keys of `kind`, the least recently used goes."""
        ((size,),) = self._db.execute("SELECT n FROM sizes WHERE kind = ?", (kind,)).fetchall()
        if size > self.settings.max_entries:
            if kind in _OLDEST:
                self._db.execute(_OLDEST[kind])
            else:
                self._db.execute(_OLDEST_FAILURES, (kind, kind))

    def _prune(self, now: float) -> None:
        """Rows whose every time has passed (the file's size stays that of what counts)."""
        since = now - self.settings.failure_window
        self._db.execute("DELETE FROM failures WHERE kind IN ('client', 'account') AND last <= ?",
                         (since,))  # fmt: skip
        self._db.execute("DELETE FROM blocks WHERE until <= ?", (now,))
        self._db.execute("DELETE FROM known WHERE until <= ?", (now,))

    def sizes(self) -> tuple[int, int, int]:
        counts = dict(self._db.execute("SELECT kind, n FROM sizes").fetchall())
        return counts["client"], counts["account"], counts["block"]

    def known_clients(self) -> int:
        ((n,),) = self._db.execute(
            "SELECT count(*) FROM known WHERE until > ?", (self._now(),)
        ).fetchall()
        return int(n)
