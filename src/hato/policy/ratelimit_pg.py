"""Sending limits, holds and spike state on the shared PostgreSQL store, so that a per-user
hourly limit holds across every node (sessions on all nodes together cannot exceed it).

The same `SendLimiter` (its SQL is written for both databases) over the `sent` and
`send_accounts` tables (hato.pgstore.schema, migration 1). Where SQLite's ``BEGIN IMMEDIATE``
makes a check and its reservation one step, here each step that writes is one transaction
that first takes a transaction-level advisory lock on the user (`pg_advisory_xact_lock`), so two
nodes' sessions of one user are serialised and never both take the last recipient of the hour,
while other users' sessions run in parallel. As on SQLite, only a limit that is on writes: with
every limit 0 a MAIL FROM or RCPT TO costs one query (is the user held?), no transaction.

A database that does not answer raises `StoreUnavailable`: the session answers with a 4xx.

May import hato.model only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hato.model import Clock
from hato.model.storeerror import StoreUnavailable
from hato.policy.ratelimit import SendLimiter, SendLimitSettings

WAIT = 2.0  # seconds to wait for a pooled connection


class PgSendLimiter(SendLimiter):
    """`SendLimiter` on the shared PostgreSQL store; the pool is the caller's."""

    _ACCOUNT = "send_accounts"

    def __init__(
        self, clock: Clock, settings: SendLimitSettings | None, pool: ConnectionPool[Any]
    ) -> None:
        super().__init__(clock, settings)
        self._pool = pool
        self._local = threading.local()

    def close(self) -> None:
        """The pool is the caller's."""

    @contextlib.contextmanager
    def _tx(self, key: str) -> Iterator[None]:
        try:
            with self._pool.connection(timeout=WAIT) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("limit:" + key,))
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the PostgreSQL store failed: {exc}") from None

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        query = sql.replace("?", "%s")  # the shared SQL holds no literal "?"
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None:
            return _fetch(conn.execute(query, params))
        try:
            with self._pool.connection(timeout=WAIT) as fresh:
                return _fetch(fresh.execute(query, params))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the PostgreSQL store failed: {exc}") from None


def _fetch(cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = cursor.fetchall() if cursor.description else []
    return rows
