"""The shared PostgreSQL store's plumbing: connecting (pool, password, statement timeout) and the
versioned schema (`schema_version`, the migrations, the check at start).

The SQL that reads and writes each room's rows lives in that room's PostgreSQL backend
(`accounts/postgres.py`, ...); the tables themselves are made here, in one ordered list of
migrations, so that one number says what shape the whole database has.

Needs the `postgres` extra (psycopg 3 and psycopg_pool): import this package only when
[store] backend = "postgresql". Must not import anything of hato but model.
"""

from hato.pgstore.pool import (
    PgSettings,
    StoreUnavailable,
    connect,
    connect_listener,
    open_async_pool,
    open_pool,
)
from hato.pgstore.schema import SCHEMA_VERSION, SchemaMismatch, check_schema, migrate

__all__ = [
    "SCHEMA_VERSION",
    "PgSettings",
    "SchemaMismatch",
    "StoreUnavailable",
    "check_schema",
    "connect",
    "connect_listener",
    "migrate",
    "open_async_pool",
    "open_pool",
]
