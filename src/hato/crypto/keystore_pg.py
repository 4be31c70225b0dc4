"""Users' public keys and key policies on the shared PostgreSQL store ([store] backend =
"postgresql"): the same `KeyStore` (its SQL is written for both databases) over the `keys` and
`key_policies` tables (hato.pgstore.schema, migration 1), so that a key imported with
`hato key` on one node encrypts the user's mail on every node, and WKD on every node serves it.
Nothing is cached (no file changes when another node edits the tables).

May import hato.model only (and this room).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hato.crypto.keystore import KeyStore
from hato.model.storeerror import StoreError, StoreUnavailable

WAIT = 2.0  # seconds to wait for a pooled connection


class PgKeyStore(KeyStore):
    """`KeyStore` on the shared PostgreSQL store; the pool is the caller's."""

    _POLICIES = "key_policies"

    def __init__(self, pool: ConnectionPool[Any]) -> None:  # no SQLite file: no super()
        self._path = Path("the PostgreSQL store")
        self._lock = threading.Lock()
        self._pool = pool

    @property
    def cache_stamp(self) -> Path | None:
        return None

    def close(self) -> None:
        """The pool is the caller's."""

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection(timeout=WAIT) as conn:
                cursor = conn.execute(sql.replace("?", "%s"), params)  # no literal "?" in it
                rows: list[tuple[Any, ...]] = cursor.fetchall() if cursor.description else []
                return rows
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the PostgreSQL store failed: {exc}") from None
        except psycopg.Error as exc:  # a statement refused (e.g. the table not migrated)
            raise StoreError(f"the PostgreSQL store failed: {exc}") from None
