"""[store] into the shared store's pieces: the PostgreSQL settings a room is handed, and the
check at start that the database is reachable and at this code's schema version.

Imports hato.pgstore (and so psycopg) only when [store] backend = "postgresql".
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from hato.boot.process import EX_CONFIG, EX_TEMPFAIL, StartupError
from hato.config import Settings

if TYPE_CHECKING:
    from hato.pgstore import PgSettings

_EXTRA = "pip install 'psycopg[binary]' psycopg-pool (Hato's postgres extra)"


def pg_settings(settings: Settings, node: str | None = None) -> PgSettings:
    """The PostgreSQL settings of [store]; raises StartupError (78) if psycopg is missing."""
    try:
        from hato.pgstore import PgSettings
    except ImportError:
        raise StartupError(
            f'store.backend: "postgresql" needs psycopg 3 and its pool: {_EXTRA}', EX_CONFIG
        ) from None
    store = settings.store
    assert store.dsn is not None  # config: backend "postgresql" needs a dsn
    return PgSettings(
        dsn=store.dsn,
        password_file=store.password_file,
        pool_size=store.pool_size,
        statement_timeout=store.statement_timeout,
        application_name=f"hato {node or socket.gethostname()}"[:63],
    )


def check_store(settings: Settings) -> None:
    """At start: with PostgreSQL, the database answers and has this code's schema.

    Unreachable: 75 (EX_TEMPFAIL: a service manager may try again later); another schema: 78
    (running again will not help: migrate, or upgrade this node)."""
    if settings.store.backend != "postgresql":
        return
    from hato.pgstore import SchemaMismatch, StoreUnavailable, check_schema, connect

    try:
        with connect(pg_settings(settings)) as conn:
            check_schema(conn)
    except StoreUnavailable as exc:
        raise StartupError(
            f"store.dsn: the PostgreSQL store is unreachable: {exc}", EX_TEMPFAIL
        ) from None
    except SchemaMismatch as exc:
        raise StartupError(f"store: {exc}", EX_CONFIG) from None
