"""[store] into the PostgreSQL settings a room is handed (`hato.pgstore.PgSettings`).

Apart from hato.boot.store so that a command that only needs a connection (`hato dovecot-auth`,
run at every IMAP login) does not import the rooms that module wires (crypto, policy, queue).
Imports hato.pgstore (and so psycopg) only when called.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from hato.boot.process import EX_CONFIG, StartupError

if TYPE_CHECKING:
    from hato.config import Settings
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
