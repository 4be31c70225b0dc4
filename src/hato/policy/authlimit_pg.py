"""AUTH failure counters and client blocks on the shared PostgreSQL store, so that a client
blocked for guessing passwords on one node is blocked on every node, and failures on all
nodes count together toward the delays and the block.

The same `AuthThrottle`; only its counters and blocks move to the `auth_failures` and
`auth_blocks` tables (hato.pgstore.schema, migration 3), on the wall clock (nodes share no
monotonic clock). Which clients an account knows stays per node (it only relaxes delays).
The store is the one answer to `blocked` while it answers (so an admin's unblock, on any node,
holds on every node). A database that does not answer fails open for the check (`blocked`
says only what this node blocked itself, a failure is counted on this node only): a down
database must not lock every user out; the error is logged.

May import hato.model only.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hato.model import Clock, logfmt
from hato.policy.authlimit import AuthThrottle, AuthThrottleSettings, client_key

log = logging.getLogger("hato.auth")
WAIT = 2.0  # seconds to wait for a pooled connection


class PgAuthThrottle(AuthThrottle):
    """`AuthThrottle` whose counters and blocks live in the shared store."""

    def __init__(
        self, clock: Clock, settings: AuthThrottleSettings | None, pool: ConnectionPool[Any]
    ) -> None:
        super().__init__(clock, settings)
        self._pool = pool

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]] | None:
        """The statement's rows; None when the database did not answer (logged)."""
        try:
            with self._pool.connection(timeout=WAIT) as conn:
                cursor = conn.execute(sql, params)
                rows: list[tuple[Any, ...]] = cursor.fetchall() if cursor.description else []
                return rows
        except psycopg.OperationalError as exc:
            log.warning(logfmt("store-unavailable", error=str(exc).splitlines()[0]))
            return None

    def _add(self, client: str, account: str, now: float) -> None:
        wall = self._clock.now()
        added = self._rows(
            "INSERT INTO auth_failures (kind, key, at) VALUES ('client', %s, %s)"
            + (", ('account', %s, %s)" if account else ""),
            (client, wall, account, wall) if account else (client, wall),
        )
        if added is None:
            super()._add(client, account, now)

    def _forget(self, client: str) -> None:
        self._rows("DELETE FROM auth_failures WHERE kind = 'client' AND key = %s", (client,))
        super()._forget(client)

    def _counts(self, client: str, account: str) -> tuple[int, int]:
        since = self._clock.now() - self.settings.failure_window
        rows = self._rows(
            "SELECT count(*) FILTER (WHERE kind = 'client' AND key = %s),"
            " count(*) FILTER (WHERE kind = 'account' AND key = %s)"
            " FROM auth_failures WHERE at > %s AND key IN (%s, %s)",
            (client, account, since, client, account),
        )
        if not rows:
            return super()._counts(client, account)
        return int(rows[0][0]), int(rows[0][1]) if account else 0

    def _block(self, client: str, until: float) -> None:
        wall_until = until - self._clock.monotonic() + self._clock.now()
        self._rows(
            "INSERT INTO auth_blocks (client, until) VALUES (%s, %s)"
            " ON CONFLICT (client) DO UPDATE SET until = excluded.until",
            (client, wall_until),
        )
        # Old failures go: the window's rows are what the block was counted from.
        self._rows("DELETE FROM auth_failures WHERE at <= %s", (self._clock.now() - 86_400,))
        super()._block(client, until)

    def blocked(self, ip: str) -> bool:
        """The store's answer when it gives one (a block `hato user unblock` lifted on any
        node is lifted here too); this node's own blocks only while it does not answer."""
        rows = self._rows(
            "SELECT 1 FROM auth_blocks WHERE client = %s AND until > %s",
            (client_key(ip), self._clock.now()),
        )
        if rows is None:
            return super().blocked(ip)
        return bool(rows)

    def blocks(self) -> list[tuple[str, float]]:
        rows = self._rows(
            "SELECT client, until FROM auth_blocks WHERE until > %s ORDER BY client",
            (self._clock.now(),),
        )
        if rows is None:
            return super().blocks()
        return [(str(client), float(until)) for client, until in rows]

    def unblock(self, ip: str) -> bool:
        rows = self._rows(
            "DELETE FROM auth_blocks WHERE client = %s RETURNING 1", (client_key(ip),)
        )
        return super().unblock(ip) or bool(rows)
