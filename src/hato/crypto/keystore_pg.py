"""Users' public keys and key policies on the shared PostgreSQL store ([store] backend =
"postgresql"): the same `KeyStore` (its SQL is written for both databases) over the `keys` and
`key_policies` tables (hato.pgstore.schema, migration 1), so that a key imported with
`hato key` on one node encrypts the user's mail on every node, and WKD on every node serves it.
In the server a key that is there is kept until any node changes the tables (a `NotifiedCache`,
model/notified.py, told by LISTEN hato_directory); "no key" and policies are read every time,
since a stale one would store in the clear the mail of a user who just uploaded a key. Only
`KeptKeys`, the SMTP session's RCPT view, keeps "no key" as well: its caller has the queue
check those recipients again in the commit's own transaction (queue/postgres.py `unkeyed`),
so a stale "no" costs a 451 for that message, never a copy in the clear.

May import hato.model only (and this room).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hato.crypto.keys import PublicKey
from hato.crypto.keystore import FailurePolicy, KeyStore, canonical
from hato.model import Address
from hato.model.notified import NotifiedCache
from hato.model.storeerror import StoreError, StoreUnavailable

WAIT = 2.0  # seconds to wait for a pooled connection


class PgKeyStore(KeyStore):
    """`KeyStore` on the shared PostgreSQL store; the pool is the caller's."""

    _POLICIES = "key_policies"

    def __init__(  # no SQLite file: no super()
        self, pool: ConnectionPool[Any], cache: NotifiedCache | None = None
    ) -> None:
        """`cache`: keep the keys found there (None: ask every time)."""
        self._path = Path("the PostgreSQL store")
        self._lock = threading.Lock()
        self._pool = pool
        self._cache = cache

    def get(self, address: Address) -> PublicKey | None:
        if self._cache is None:
            return super().get(address)
        key = ("keys", canonical(address))
        # Only a key that is there is kept: a stale "no key" would mean plaintext.
        return self._cache.get(key, lambda: super(PgKeyStore, self).get(address), _is_key)

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


def _is_key(key: PublicKey | None) -> bool:
    return key is not None


def _always(key: PublicKey | None) -> bool:
    return True


class KeptKeys:
    """The RCPT verdict's `KeyLookup` (intake/recipients.py): `get` keeps "no key" too, while
    LISTEN is in effect and until any notification (model/notified.py). Only for a caller
    that passes the mailboxes it was told "no key" for to the queue's commit as `unkeyed`,
    where they are checked again in the commit's transaction: a stale "no" then refuses the
    message (451 4.7.5) instead of storing it in the clear. Policies are read every time."""

    def __init__(self, store: PgKeyStore, cache: NotifiedCache) -> None:
        self._store = store
        self._cache = cache

    def get(self, address: Address) -> PublicKey | None:
        key = ("keys, no included", canonical(address))  # not the store's own entries
        return self._cache.get(key, lambda: self._store.get(address), _always)

    def policy(self, address: Address) -> FailurePolicy:
        return self._store.policy(address)
