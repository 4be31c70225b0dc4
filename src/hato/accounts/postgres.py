"""The accounts on the shared PostgreSQL store ([store] backend = "postgresql").

The same `UserStore` (argon2id hashes, SCRAM keys, re-hashing on login, the dummy hash that
keeps an unknown account's timing like a known one's) over the `users` table of the shared
database, so that an account added, changed or removed on one node is what every node checks
at the next RCPT or AUTH: every call is one statement on a pooled connection in autocommit, so
it sees every commit made before it. `exists` is one primary-key look-up; in the server its
True answers are kept until any node changes the table (a `NotifiedCache`, model/notified.py,
told by LISTEN hato_directory: its docstring says why only True is kept).

The table is made by `hato store migrate` (hato.pgstore.schema, migration 1). A database that
cannot be reached raises `StoreUnavailable` from the call that needed it, and the session
answers 451 4.3.0 (RFC 3463 X.3.0: a temporary system problem), never 250.

Must not import anything of hato but model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from argon2 import Parameters
from argon2.profiles import RFC_9106_LOW_MEMORY

from hato.accounts.authcache import VerifiedCache
from hato.accounts.store import UserStore, canonical_key
from hato.model import Address
from hato.model.auth import SCRAM_ITERATIONS
from hato.model.notified import NotifiedCache
from hato.model.storeerror import StoreError, StoreUnavailable

WAIT = 2.0  # seconds to wait for a pooled connection
RETRY_AFTER = 2.0  # seconds to fail at once after the database did not answer


def _pg(sql: str) -> str:
    # The SQL is shared with the SQLite store, written with "?" placeholders; none of it holds
    # a literal "?".
    return sql.replace("?", "%s")


class ConnectionSource(Protocol):
    """Where each call takes its connection: the process's psycopg_pool.ConnectionPool (the
    server, `hato user`), or the one connection of a one-shot process (`hato dovecot-auth`,
    whose process must not start the pool's threads: see hato.cli.dovecot)."""

    def connection(
        self, timeout: float | None = None
    ) -> AbstractContextManager[psycopg.Connection[Any]]: ...


class PgUserStore(UserStore):
    """`UserStore` on the `users` table of the shared PostgreSQL store."""

    def __init__(
        self,
        pool: ConnectionSource,
        *,
        parameters: Parameters = RFC_9106_LOW_MEMORY,
        scram_iterations: int = SCRAM_ITERATIONS,
        verified_cache: VerifiedCache | None = None,
        label: str = "the PostgreSQL store",
        cache: NotifiedCache | None = None,
    ) -> None:
        """`cache`: keep `exists`'s True answers there (None: ask every time)."""
        super().__init__(
            Path(label),
            parameters=parameters,
            scram_iterations=scram_iterations,
            verified_cache=verified_cache,
        )
        self._pool = pool
        self._label = label
        self._cleared = False
        self._down_until = 0.0
        self._cache = cache

    @property
    def cache_stamp(self) -> Path | None:
        return None  # no file changes when another node edits the table

    def __str__(self) -> str:
        return self._label

    def exists(self, address: Address) -> bool:
        if self._cache is None:
            return super().exists(address)
        key = ("users", canonical_key(address))
        return self._cache.get(key, lambda: super(PgUserStore, self).exists(address), bool)

    def _clear_scram(self) -> None:
        # [auth] scram_iterations = 0: no SCRAM keys are kept (as the SQLite store does on open).
        if self._cleared or self._scram_iterations:
            return
        self._cleared = True
        self._change(
            "UPDATE users SET scram_salt = NULL, scram_iterations = NULL,"
            " scram_stored_key = NULL, scram_server_key = NULL WHERE scram_salt IS NOT NULL",
            (),
        )

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        self._clear_scram()
        with self._connection() as conn:
            rows: list[tuple[Any, ...]] = conn.execute(_pg(sql), params).fetchall()
            return rows

    def _change(self, sql: str, params: tuple[object, ...]) -> int:
        with self._connection() as conn:
            return int(conn.execute(_pg(sql), params).rowcount)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; StoreUnavailable when the database does not answer. `exists`
        runs on the event loop, so after a failure the store fails at once for a moment
        (RETRY_AFTER) instead of making every RCPT wait for the connect timeout."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("the PostgreSQL store is unreachable (failed a moment ago)")
        try:
            with self._pool.connection(timeout=WAIT) as conn:
                yield conn
        except psycopg.OperationalError as exc:  # down, failing over, PoolTimeout
            self._down_until = time.monotonic() + RETRY_AFTER
            raise StoreUnavailable(f"the PostgreSQL store failed: {exc}") from None
        except psycopg.Error as exc:  # a statement refused (e.g. the table not migrated)
            raise StoreError(f"the PostgreSQL store failed: {exc}") from None

    def close(self) -> None:
        """The pool is the caller's (shared by the stores of a process): nothing to close."""
