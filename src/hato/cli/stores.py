"""The stores a command edits (accounts, keys), opened on whichever backend [store] names.

Must not import anything of hato at module level but hato.cli.

A command sees a store's Protocol and `hato.model.storeerror`'s errors, never its backend's
(sqlite3, psycopg): `hato user` and `hato key` behave alike on SQLite and PostgreSQL. A store
that cannot be reached now exits 75 (EX_TEMPFAIL: try again); any other failure of the store
exits 1 with the store's reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hato.cli.errors import CommandError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from hato.config import LoadedSettings

EX_TEMPFAIL = 75


@contextlib.contextmanager
def store_pool(loaded: LoadedSettings) -> Iterator[ConnectionPool[Any] | None]:
    """The shared store's pool ([store] backend = "postgresql"; closed after), else None."""
    from hato.boot.process import StartupError
    from hato.boot.store import open_store_pool

    try:
        pool = open_store_pool(loaded.settings, "cli")
    except StartupError as exc:
        raise CommandError(str(exc), exc.exit_code) from None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """A store's failure inside the block as one line naming the store (`what` for an
    OSError): 75 if it is unavailable (hato.model.storeerror.StoreUnavailable), else 1."""
    from hato.model.storeerror import StoreError, StoreUnavailable

    try:
        yield
    except StoreUnavailable as exc:
        raise CommandError(str(exc), EX_TEMPFAIL) from None  # it names the store
    except OSError as exc:
        raise CommandError(f"cannot use {what}: {exc.strerror or exc}") from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None  # it names the store
