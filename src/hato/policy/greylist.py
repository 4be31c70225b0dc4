"""Greylisting, the connection rate and the early-talker passes, in one SQLite file every
worker shares.

Greylisting (RFC 6647): the first delivery attempt of an unknown triplet — the client's
network (IPv4 /24, IPv6 /64: RFC 6647 §4.2, a sending farm retries from a neighbour), the
sender and the recipient — gets 451 4.7.1 at RCPT; a retry after `delay` seconds and within
`retry_window` after that passes, and the triplet stays known for `max_age` after it was last
seen. A retry after the window starts over (RFC 6647 §2.1: a real MTA retries in minutes, a
bot rarely retries at all). Allow-listed (DNSWL) clients and SPF-pass senders never get here:
the caller exempts them.

The connection rate (Postfix's anvil): a client network (IPv4 address, IPv6 /64) may open at
most `limit` connections per `window` seconds, counted in a window that starts at its first
connection; past it 421 4.7.0. A client that waited for a whole greeting is remembered for a
while (Postfix's postscreen_greet_ttl), so that it is not made to wait again. Each step is
one ``BEGIN IMMEDIATE`` transaction, so workers (`[server] workers`) count together and agree
on a triplet's first sighting.

The file (DATA_DIR/screen.db, WAL, no fsync per write) holds nothing that must survive a power
cut: a lost row means one more 451, or one connection more in a minute.

May import hato.model only. Time comes from the Clock (wall clock: shared by processes).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hato.model import Clock, Reply
from hato.policy.decision import Accept, Decision, Defer
from hato.policy.ratelimit import Immediate
from hato.policy.screen import RATE_EXCEEDED

SCREEN_DB = "screen.db"
_BUSY_TIMEOUT = 10.0
_SWEEP_EVERY = 1000  # writes between sweeps of expired rows
_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplet (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,             -- lower-case; "" for the null reverse-path
    recipient TEXT NOT NULL,          -- lower-case
    first_seen REAL NOT NULL,         -- wall clock of the (latest) first attempt
    passed_at REAL,                   -- NULL until a retry came after the delay
    last_seen REAL NOT NULL,
    PRIMARY KEY (network, sender, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS triplet_seen ON triplet (last_seen);
CREATE TABLE IF NOT EXISTS passed (  -- clients that waited for the whole greeting
    network TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate (
    network TEXT PRIMARY KEY,
    started REAL NOT NULL,            -- the window's first connection
    count INTEGER NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class GreylistSettings:
    delay: float = 300.0  # seconds before a retry passes (Postgrey's default; RFC 6647 §5)
    retry_window: float = 2 * 86_400.0  # seconds after the delay in which a retry passes
    max_age: float = 35 * 86_400.0  # seconds a passed triplet is remembered since last seen


def greylisted(wait: float) -> Reply:
    # RFC 6647 §2.1: a temporary failure (RFC 5321 §4.2.5 451); RFC 3463 X.7.1.
    return Reply(451, "4.7.1", f"Greylisted: please try again in {max(1, round(wait))} seconds")


class ScreenStore:
    """The shared state of the screen: greylisted triplets and connection rates."""

    def __init__(self, clock: Clock, path: Path | None) -> None:
        self._clock = clock
        self._writes = 0
        if path is not None and not path.exists():
            path.touch(mode=0o600)
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,  # autocommit: transactions are the explicit BEGIN IMMEDIATE
            check_same_thread=False,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def connection(self, network: str, limit: int, window: float = 60.0) -> Decision:
        """Count one connection of `network`: Accept, or the 421 past `limit` per `window`."""
        now = self._clock.now()
        with Immediate(self._db):
            row = self._db.execute(
                "SELECT started, count FROM rate WHERE network = ?", (network,)
            ).fetchone()
            if row is None or now - row[0] >= window or now < row[0]:
                started, count = now, 1
            else:
                started, count = row[0], row[1] + 1
            self._db.execute(
                "INSERT OR REPLACE INTO rate (network, started, count) VALUES (?, ?, ?)",
                (network, started, count),
            )
            self._sweep(now - window, "DELETE FROM rate WHERE started < ?")
        return Accept() if count <= limit else Defer(RATE_EXCEEDED)

    def passed(self, network: str) -> bool:
        """Whether `network` waited for a whole greeting lately (`remember_pass`)."""
        row = self._db.execute("SELECT until FROM passed WHERE network = ?", (network,)).fetchone()
        return row is not None and row[0] > self._clock.now()

    def remember_pass(self, network: str, ttl: float) -> None:
        now = self._clock.now()
        with Immediate(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO passed (network, until) VALUES (?, ?)", (network, now + ttl)
            )
            self._sweep(now, "DELETE FROM passed WHERE until < ?")

    def greylist(
        self, network: str, sender: str, recipient: str, settings: GreylistSettings
    ) -> Decision:
        """Accept a known triplet (or a retry after the delay); Defer a new or early one."""
        now = self._clock.now()
        key = (network, sender.casefold(), recipient.casefold())
        with Immediate(self._db):
            row = self._db.execute(
                "SELECT first_seen, passed_at, last_seen FROM triplet"
                " WHERE network = ? AND sender = ? AND recipient = ?",
                key,
            ).fetchone()
            if row is not None and now - row[2] > settings.max_age:
                row = None  # forgotten: unseen for longer than max_age
            first, passed = (now, None) if row is None else (row[0], row[1])
            if passed is None and now - first > settings.delay + settings.retry_window:
                first = now  # RFC 6647 §2.1: too late a retry starts over
            if passed is None and now - first >= settings.delay and row is not None:
                passed = now
            self._db.execute(
                "INSERT OR REPLACE INTO triplet"
                " (network, sender, recipient, first_seen, passed_at, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, first, passed, now),
            )
            horizon = max(settings.max_age, settings.delay + settings.retry_window)
            self._sweep(now - horizon, "DELETE FROM triplet WHERE last_seen < ?")
        if passed is not None:
            return Accept()
        return Defer(greylisted(first + settings.delay - now))

    def _sweep(self, before: float, statement: str) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._db.execute(statement, (before,))
