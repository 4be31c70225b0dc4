"""Per-user sending limits, and holding an account whose sending suddenly spikes.

Theory: each authenticated user has a sliding window of one hour counted in whole minutes; a
message counts from its minute until 59 to 60 minutes later. Past `messages_per_hour` MAIL FROM
gets 451 4.7.1, past `recipients_per_hour` RCPT TO does; the client's queue retries later
(RFC 5321 §4.2.5: 451 is a transient local refusal; RFC 3463 X.7.1: delivery not authorized).

Reserved, not counted afterwards: MAIL FROM reserves the message and each RCPT TO one recipient,
each in one ``BEGIN IMMEDIATE`` transaction that reads the window and writes the reservation, so
two sessions can never both take the last recipient of the hour (20 parallel sessions used to
get 20 times the limit, since usage was recorded only after the 250). `confirm` after the 250
keeps the reservation as usage; `release` when the transaction ends without one (RSET, a new
MAIL, a refused or aborted DATA, a lost connection) gives it back. The state lives in one SQLite
file in the data directory (WAL), shared by every worker process (`[server] workers`) and by a
server started again; a reservation left by a process that died counts until it leaves the
window (safe: never more than the limit).

Only what a limit that is on needs is written (issue 15 item 4: three write transactions per
message cost ~10 % of the event loop relaying submitted mail): MAIL FROM writes only under
`messages_per_hour` (else the message's row comes with its first counted recipient), RCPT TO
only under `recipients_per_hour` or `spike_recipients`, and the 250 writes only when its minute
is later than the last reservation's (the message counts from the minute of its 250) or a spike
is found (a read first, then checked again under the lock: one alert per burst). Whether the
250 came is known to the process holding the reservation, so `release` needs no flag in the
file. With every limit 0 nothing is written: MAIL FROM and RCPT TO read whether the user is
held (a hold set by another worker or process counts for the next command).

A spike is an absolute burst: at least `spike_recipients` recipients within the last
`spike_window` seconds (whole minutes). Chosen over "N times the usual rate" because it needs no
history, cannot be trained up slowly by an attacker, and an admin can predict it. A spike
returns a `SpikeAlert` (the caller logs ``event=sending-spike``) and, with `spike_hold`, holds
the user: everything they send gets 451 4.7.1 until `unhold(user)` (`hato user release`) or
`hold_time` passes (0: until released; `hato user held` lists the holds). A compromised
account thus sends one burst at most, not a day of spam.

May import hato.model only. Time comes from the Clock (wall clock: shared by processes).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hato.model import Clock, Reply
from hato.policy.decision import Accept, Decision, Defer

# RFC 5321 §4.2.5 451 (local error, try later) / RFC 3463 X.7.1 (not authorized).
RATE_LIMITED = Reply(451, "4.7.1", "Sending rate limit reached; try again later")
HELD = Reply(451, "4.7.1", "Sending suspended for this account; contact your administrator")
LIMITS_DB = "limits.db"

_BUCKET = 60.0  # seconds per minute bucket
_HOUR_BUCKETS = 60
_BUSY_TIMEOUT = 10.0  # seconds a worker waits for a sibling's transaction
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (      -- one row per message, reserved at MAIL FROM
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,                -- lower-case
    minute INTEGER NOT NULL,           -- of the last reservation or the confirmation
    recipients INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL DEFAULT 1 -- unused: the holder of the reservation knows of its 250
);
CREATE INDEX IF NOT EXISTS sent_user ON sent (user, minute);
CREATE INDEX IF NOT EXISTS sent_minute ON sent (minute);
CREATE TABLE IF NOT EXISTS account (
    user TEXT PRIMARY KEY,
    held_until REAL,                   -- NULL: not held; wall-clock end (inf: until released)
    alerted_until REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class SendLimitSettings:
    messages_per_hour: int = 200  # per authenticated user; 0 = no limit
    recipients_per_hour: int = 1000  # 0 = no limit
    spike_recipients: int = 300  # recipients within spike_window that make a spike; 0 = off
    spike_window: float = 300.0  # seconds, rounded up to whole minutes, at most an hour
    spike_hold: bool = True  # hold the user on a spike (else only alert)
    hold_time: float = 86_400.0  # seconds a hold lasts; 0 = until an admin releases it

    def __post_init__(self) -> None:
        if min(self.messages_per_hour, self.recipients_per_hour, self.spike_recipients) < 0:
            raise ValueError("limits must be 0 (off) or positive")
        if not 0 < self.spike_window <= 3600 or self.hold_time < 0:
            raise ValueError("spike_window must be 1..3600 s, hold_time >= 0")


@dataclass(slots=True)
class Reservation:
    """One transaction's reserved message and recipients: its row of the `sent` table once
    something is counted (None before), the minute it was last counted in, and whether the
    250 came (a release is too late then). Held by the session: changed by the limiter."""

    user: str
    row: int | None = None
    minute: int = 0
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class SpikeAlert:
    """A burst from one user: log it as ``logfmt("sending-spike", **alert.fields())``."""

    user: str
    recipients: int  # within `window` seconds
    messages: int
    window: float
    held: bool
    hold_time: float  # 0: until released

    def fields(self) -> dict[str, object]:
        return {
            "user": self.user,
            "recipients": self.recipients,
            "messages": self.messages,
            "window": int(self.window),
            "held": "yes" if self.held else "no",
            "hold_time": int(self.hold_time) if self.hold_time else "until-released",
        }


class SendLimiter:
    """Sending limits for authenticated users, shared through `path` (None: this process only).

    MAIL FROM: ``reserve_message(user)`` gives a Reservation (or the Defer to answer); each RCPT
    TO: ``reserve_recipient(reservation)``; after the 250 ``confirm(reservation)``, logging a
    returned SpikeAlert; a transaction that ends otherwise: ``release(reservation)``.

    The SQL is written for SQLite and PostgreSQL alike ("?" placeholders, "user" quoted,
    RETURNING); a backend changes only `_tx`, `_rows` and the table name `_ACCOUNT`
    (policy/ratelimit_pg.py).
    """

    _ACCOUNT = "account"

    def __init__(
        self, clock: Clock, settings: SendLimitSettings | None = None, path: Path | None = None
    ) -> None:
        self._clock = clock
        self.settings = settings or SendLimitSettings()
        self._db = open_limits(path) if path is not None or type(self) is SendLimiter else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _tx(self, key: str) -> contextlib.AbstractContextManager[None]:
        """One transaction that holds `key`'s counts still from its first read on."""
        assert self._db is not None
        return Immediate(self._db)

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()

    def reserve_message(self, user: str) -> Reservation | Defer:
        key = _key(user)
        if not self.settings.messages_per_hour:  # nothing to count: only a hold refuses
            return Defer(HELD) if self.held(key) else Reservation(key)
        with self._tx(key):
            refusal = self._refusal(key, messages=1, recipients=0)
            if refusal is not None:
                return refusal
            minute = self._minute()
            return Reservation(key, self._insert(key, minute, 0), minute)

    def reserve_recipient(self, reservation: Reservation, count: int = 1) -> Decision:
        key, s = reservation.user, self.settings
        if not (s.recipients_per_hour or s.spike_recipients):  # nothing to count
            return Defer(HELD) if self.held(key) else Accept()
        with self._tx(key):
            refusal = self._refusal(key, messages=0, recipients=count)
            if refusal is not None:
                return refusal
            minute = self._minute()
            if reservation.row is None:
                reservation.row = self._insert(key, minute, count)
            else:
                self._rows(
                    "UPDATE sent SET recipients = recipients + ?, minute = ? WHERE id = ?",
                    (count, minute, reservation.row),
                )
            reservation.minute = minute
        return Accept()

    def release(self, reservation: Reservation) -> None:
        """The transaction ended without a 250: its reservation no longer counts."""
        if reservation.confirmed or reservation.row is None:
            return  # a confirmed message stays counted; nothing was counted
        with self._tx(reservation.user):
            self._rows("DELETE FROM sent WHERE id = ?", (reservation.row,))
        reservation.row = None

    def confirm(self, reservation: Reservation) -> SpikeAlert | None:
        """The message was accepted: its reservation is usage now; a SpikeAlert when this
        message makes a spike."""
        reservation.confirmed = True
        now, minute = self._clock.now(), self._minute()
        if reservation.row is not None and minute != reservation.minute:
            with self._tx(reservation.user):  # counted from the minute of its 250
                self._rows("UPDATE sent SET minute = ? WHERE id = ?", (minute, reservation.row))
            reservation.minute = minute
        if not self.settings.spike_recipients or self._burst(reservation.user, minute, now) is None:
            return None  # read without the lock: most messages make no spike
        with self._tx(reservation.user):
            return self._spike(reservation.user, minute, now)

    def held(self, user: str) -> bool:
        rows = self._rows(f'SELECT held_until FROM {self._ACCOUNT} WHERE "user" = ?', (_key(user),))
        return bool(rows) and rows[0][0] is not None and rows[0][0] > self._clock.now()

    def held_users(self) -> list[str]:
        return [user for user, _ in self.holds()]

    def holds(self) -> list[tuple[str, float]]:
        """(user, wall-clock end of the hold: inf until released) of each held user, by name."""
        rows = self._rows(
            f'SELECT "user", held_until FROM {self._ACCOUNT} WHERE held_until > ? ORDER BY "user"',
            (self._clock.now(),),
        )
        return [(str(user), float(until)) for user, until in rows]

    def unhold(self, user: str) -> bool:
        """An admin lets the user send again (and resets their spike count); whether held."""
        key = _key(user)
        was = self.held(key)
        with self._tx(key):
            self._rows(f'DELETE FROM {self._ACCOUNT} WHERE "user" = ?', (key,))
            self._rows('UPDATE sent SET recipients = 0 WHERE "user" = ?', (key,))
        return was

    def usage(self, user: str) -> tuple[int, int]:
        """(messages, recipients) in the current hour's window, reservations included."""
        return self._totals(_key(user), self._minute() - _HOUR_BUCKETS + 1)

    def _minute(self) -> int:
        return int(self._clock.now() // _BUCKET)

    def _insert(self, key: str, minute: int, recipients: int) -> int:
        """A new row for one message, inside a transaction; rows out of every window go."""
        self._rows("DELETE FROM sent WHERE minute < ?", (minute - _HOUR_BUCKETS + 1,))
        ((row,),) = self._rows(
            'INSERT INTO sent ("user", minute, recipients) VALUES (?, ?, ?) RETURNING id',
            (key, minute, recipients),
        )
        return int(row)

    def _totals(self, key: str, since_minute: int) -> tuple[int, int]:
        ((count, recipients),) = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(recipients), 0) FROM sent"
            ' WHERE "user" = ? AND minute >= ?',
            (key, since_minute),
        )
        return int(count), int(recipients)

    def _refusal(self, key: str, *, messages: int, recipients: int) -> Defer | None:
        """The Defer for one more message or `recipients` more, inside a transaction."""
        if self.held(key):
            return Defer(HELD)
        limit = self.settings.recipients_per_hour if recipients else 0
        limit = self.settings.messages_per_hour if messages else limit
        if not limit:
            return None  # no limit: nothing to count
        used = self._totals(key, self._minute() - _HOUR_BUCKETS + 1)[0 if messages else 1]
        return Defer(RATE_LIMITED) if used + messages + recipients > limit else None

    def _burst(self, key: str, minute: int, now: float) -> tuple[int, int] | None:
        """(messages, recipients) within the spike window when they make a new spike."""
        s = self.settings
        rows = self._rows(f'SELECT alerted_until FROM {self._ACCOUNT} WHERE "user" = ?', (key,))
        if not s.spike_recipients or (rows and now < rows[0][0]):
            return None
        window_buckets = math.ceil(s.spike_window / _BUCKET)
        messages, recipients = self._totals(key, minute - window_buckets + 1)
        return (messages, recipients) if recipients >= s.spike_recipients else None

    def _spike(self, key: str, minute: int, now: float) -> SpikeAlert | None:
        """The spike found again inside the transaction (a sibling may have alerted since)."""
        s = self.settings
        burst = self._burst(key, minute, now)
        if burst is None:
            return None
        messages, recipients = burst
        # One alert per burst, not one per message.
        held_until = (now + s.hold_time if s.hold_time else math.inf) if s.spike_hold else None
        self._rows(
            f'INSERT INTO {self._ACCOUNT} ("user", held_until, alerted_until) VALUES (?, ?, ?)'
            ' ON CONFLICT ("user") DO UPDATE SET held_until = excluded.held_until,'
            " alerted_until = excluded.alerted_until",
            (key, held_until, now + s.spike_window),
        )
        return SpikeAlert(key, recipients, messages, s.spike_window, s.spike_hold, s.hold_time)


def open_limits(path: Path | None) -> sqlite3.Connection:
    """The limits database at `path` (created mode 0600, WAL), or one in memory."""
    if path is not None and not path.exists():
        path.touch(mode=0o600)
    db = sqlite3.connect(
        ":memory:" if path is None else str(path),
        timeout=_BUSY_TIMEOUT,
        isolation_level=None,  # autocommit: transactions are the explicit BEGIN IMMEDIATE
        check_same_thread=False,
    )
    if path is not None:
        db.execute("PRAGMA journal_mode = WAL")
        # A lost last reservation after a power cut is harmless; no fsync per RCPT.
        db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(_SCHEMA)
    return db


class Immediate:
    """One ``BEGIN IMMEDIATE`` transaction: the write lock from the first read on, so that a
    check and its reservation are one step for every process sharing the file."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _key(user: str) -> str:
    return user.strip().casefold()
