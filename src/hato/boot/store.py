"""[store] into the shared store's pieces: the PostgreSQL settings a room is handed, and the
check at start that the database is reachable and at this code's schema version.

Imports hato.pgstore (and so psycopg) only when [store] backend = "postgresql".
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.accounts import UserStore
from hato.accounts.authcache import VerifiedCache
from hato.boot.pgsettings import pg_settings as pg_settings  # re-exported (hato.cli.store)
from hato.boot.process import EX_CONFIG, EX_TEMPFAIL, StartupError
from hato.config import Settings
from hato.crypto import KeyLookup, KeyStore
from hato.model import Clock
from hato.model.notified import CHANNEL as DIRECTORY_CHANNEL
from hato.model.notified import NotifiedCache
from hato.model.queuestore import QueueError
from hato.policy import LIMITS_DB, AuthThrottle, SendLimiter
from hato.queue import Queue, QueueStore

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

USERS_DB = "users.db"


def unreachable(reason: object) -> StartupError:
    """The one wording of "the database does not answer" (75: a service manager, or the
    admin, may try again later)."""
    return StartupError(f"store.dsn: the PostgreSQL store is unreachable: {reason}", EX_TEMPFAIL)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """pgstore's StoreUnavailable as `unreachable` (75), SchemaMismatch as a StartupError 78
    (running again will not help: migrate, or upgrade this node)."""
    from hato.pgstore import SchemaMismatch, StoreUnavailable

    try:
        yield
    except StoreUnavailable as exc:
        raise unreachable(exc) from None
    except SchemaMismatch as exc:
        raise StartupError(f"store: {exc}", EX_CONFIG) from None


def check_store(settings: Settings) -> None:
    """At start: with PostgreSQL, the database answers and has this code's schema.

    Unreachable: 75 (EX_TEMPFAIL: a service manager may try again later); another schema: 78
    (running again will not help: migrate, or upgrade this node)."""
    if settings.store.backend != "postgresql":
        return
    from hato.pgstore import check_schema, connect

    with store_errors(), connect(pg_settings(settings)) as conn:
        check_schema(conn)


def open_store_pool(settings: Settings, node: str) -> ConnectionPool[Any] | None:
    """The process's PostgreSQL pool ([store] backend = "postgresql"), else None; raises
    StartupError (75) if the database cannot be reached at start."""
    if settings.store.backend != "postgresql":
        return None
    from hato.pgstore import open_pool

    with store_errors():
        return open_pool(pg_settings(settings, node))


def directory_cache(queue: QueueStore) -> NotifiedCache | None:
    """[store] postgresql: the account and key answers this process keeps, told of every
    change by LISTEN hato_directory on the queue listener's connection (model/notified.py);
    None on SQLite (boot/dbcache.py watches the files) or without a listener."""
    from hato.queue.postgres import PgQueue  # psycopg: only on PostgreSQL

    if not isinstance(queue, PgQueue) or queue.listener is None:
        return None
    cache = NotifiedCache()
    queue.listener.subscribe(DIRECTORY_CHANNEL, cache)
    return cache


def open_users(
    settings: Settings,
    data_dir: Path,
    pool: ConnectionPool[Any] | None,
    cache: NotifiedCache | None = None,
) -> UserStore:
    """The accounts: DATA_DIR/users.db, or the shared store's `users` table (its `exists`
    answers kept in `cache`, if given)."""
    iterations = settings.auth.stored_scram_iterations
    # [auth] cache_ttl: a password verified a moment ago is not run through argon2id again.
    verified = VerifiedCache(settings.auth.cache_ttl, settings.auth.cache_size)
    if pool is None:
        return UserStore(data_dir / USERS_DB, scram_iterations=iterations, verified_cache=verified)
    from hato.accounts.postgres import PgUserStore

    return PgUserStore(pool, scram_iterations=iterations, verified_cache=verified, cache=cache)


async def open_queue(
    settings: Settings,
    data_dir: Path,
    clock: Clock,
    node_id: str,
    worker: int | None,
) -> QueueStore:
    """The queue: DATA_DIR/queue on SQLite, or the shared PostgreSQL queue.

    On PostgreSQL a node is named after the machine and its data directory (and the worker),
    not the pid, so that a node started again frees its own leases of before at once (its
    data directory is locked: no other live process has that name); another node's leases
    run out by themselves."""
    if settings.store.backend != "postgresql":
        return await Queue.open(
            data_dir / "queue",
            clock=clock,
            node_id=node_id,
            min_free=settings.queue.min_free_space,
            recover=worker is None,  # with workers, the supervisor recovered before them
            id_slot=worker or 0,
        )
    from hato.pgstore import connect_listener, open_async_pool
    from hato.queue.postgres import PgQueue

    name = f"{socket.gethostname()}:{data_dir}" + (f":w{worker}" if worker is not None else "")
    pg = pg_settings(settings, name)
    with store_errors():
        pool = await open_async_pool(pg)
    try:
        return await PgQueue.open(
            pool,
            scratch=data_dir / "queue" / "scratch",
            clock=clock,
            node_id=name,
            min_free=settings.queue.min_free_space,
            id_slot=worker or 0,
            close_pool=True,
            lease_seconds=settings.store.lease_time,
            listen=lambda: connect_listener(pg),  # LISTEN hato_queue; the id slot's lock
        )
    except QueueError as exc:  # the listener's connection could not be made
        await pool.close()
        raise unreachable(exc.detail) from None


def open_limiter(
    settings: Settings, clock: Clock, data_dir: Path, pool: ConnectionPool[Any] | None
) -> SendLimiter:
    """Sending limits and holds: DATA_DIR/limits.db, or the shared store's tables."""
    from hato.boot.build import send_limit_settings

    limits = send_limit_settings(settings)
    if pool is None:
        return SendLimiter(clock, limits, data_dir / LIMITS_DB)
    from hato.policy.ratelimit_pg import PgSendLimiter

    return PgSendLimiter(clock, limits, pool)


def open_keys(
    data_dir: Path, pool: ConnectionPool[Any] | None, cache: NotifiedCache | None = None
) -> KeyStore:
    """Users' public keys and key policies: DATA_DIR/keys.db, or the shared store's tables
    (the keys found kept in `cache`, if given)."""
    if pool is None:
        return KeyStore.in_data_dir(data_dir)
    from hato.crypto.keystore_pg import PgKeyStore

    return PgKeyStore(pool, cache)


def kept_keys(keys: KeyStore, cache: NotifiedCache | None) -> KeyLookup | None:
    """[store] postgresql with its cache: the SMTP session's RCPT view of the keys, whose "no
    key" is kept too (crypto/keystore_pg.py KeptKeys: the queue checks those mailboxes again
    in the commit's transaction, intake/message.py); else None (the store's own answers)."""
    if cache is None:
        return None
    from hato.crypto.keystore_pg import KeptKeys, PgKeyStore

    return KeptKeys(keys, cache) if isinstance(keys, PgKeyStore) else None


def open_throttle(
    settings: Settings, clock: Clock, pool: ConnectionPool[Any] | None, shared: Path | None
) -> AuthThrottle:
    """AUTH failure counters and blocks: the shared store; with workers, the file `shared`
    (DATA_DIR/authlimit.db) they all count in; else this process's memory."""
    from hato.boot.build import auth_throttle_settings

    limits = auth_throttle_settings(settings)
    if pool is None and shared is not None:
        from hato.policy.authlimit_sqlite import SqliteAuthThrottle

        return SqliteAuthThrottle(clock, limits, shared)
    if pool is None:
        return AuthThrottle(clock, limits)
    from hato.policy.authlimit_pg import PgAuthThrottle

    return PgAuthThrottle(clock, limits, pool)
