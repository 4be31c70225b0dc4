"""Connecting to the shared PostgreSQL: one pool per process, the password from a file or libpq.

Theory of operation: every connection is made with the DSN of [store], the password read from
`password_file` at connect time (so a rotated password is picked up by the next connection, and
it is in no settings object or log line), `statement_timeout` set for the session (a statement
that hangs on a lock is cancelled and becomes a temporary error), and an `application_name`
naming the node (seen in pg_stat_activity). The pool is psycopg_pool's: at most `pool_size`
connections, each checked before it is handed out, so that after a database restart or a
failover to a promoted replica the next use reconnects instead of failing for good. The check
costs no round trip on a healthy connection (issue 16: it was one more per use, a third of the
queue's statements): an idle connection has nothing to read unless the server closed it or said
why it will (a shutdown, a terminated backend), so only a connection with something to read,
or not idle, gets psycopg's full check (an empty query), which drops it if it is dead.

A connection that cannot be made is `StoreUnavailable`, with libpq's reason but never the DSN's
secrets (the DSN holds none: config refuses a password in it).
"""

from __future__ import annotations

import select
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from hato.model.storeerror import StoreUnavailable as ModelStoreUnavailable

CONNECT_TIMEOUT = 5  # seconds: libpq's connect_timeout
# psycopg_pool retries a lost connection in the background with a delay that doubles without
# bound (1, 2, 4, ... 64 s) until reconnect_timeout: after an outage of a minute the pool would
# wait another minute before trying, and every session meanwhile gets 451. Giving up soon
# instead lets the next caller that finds the pool empty start a new attempt at once.
RECONNECT_TIMEOUT = 2 * CONNECT_TIMEOUT


class StoreUnavailable(ModelStoreUnavailable):
    """The database cannot be reached now (down, failing over, refusing): a temporary error."""


@dataclass(frozen=True, slots=True)
class PgSettings:
    """[store] for PostgreSQL, as boot hands it down (no room imports config)."""

    dsn: str
    password_file: Path | None = None
    pool_size: int = 10
    statement_timeout: float = 30.0
    application_name: str = "hato"


def _password(settings: PgSettings) -> str | None:
    if settings.password_file is None:
        return None  # libpq: PGPASSWORD, then ~/.pgpass
    try:
        text = settings.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot read store.password_file {settings.password_file}: {exc.strerror}"
        ) from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def connect_kwargs(settings: PgSettings) -> dict[str, Any]:
    """The keyword arguments of psycopg.connect beside the DSN (password, timeouts)."""
    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": settings.application_name,
        "options": f"-c statement_timeout={int(settings.statement_timeout * 1000)}",
    }
    password = _password(settings)
    if password is not None:
        kwargs["password"] = password
    return kwargs


def _suspect(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a pooled connection may be dead: not idle, or something to read on its socket
    (an idle connection's server sends nothing unless it closes or is about to)."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def check(conn: psycopg.Connection[Any]) -> None:
    """The sync pool's check: psycopg's (a round trip) only for a suspect connection."""
    if _suspect(conn):
        ConnectionPool.check_connection(conn)


async def check_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """The queue pool's check: psycopg's (a round trip) only for a suspect connection."""
    if _suspect(conn):
        await AsyncConnectionPool.check_connection(conn)


def connect(settings: PgSettings, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """One connection outside the pool (the CLI, migrations); raises StoreUnavailable."""
    try:
        return psycopg.connect(settings.dsn, autocommit=autocommit, **connect_kwargs(settings))
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(reason(exc)) from None


async def connect_listener(settings: PgSettings) -> psycopg.AsyncConnection[Any]:
    """A dedicated connection of the queue's LISTEN (queue/postgres_listen.py): autocommit,
    with TCP keepalives so that a server gone without a word (a failover, a cut network) is
    noticed within about a minute instead of never. Raises psycopg's OperationalError."""
    return await psycopg.AsyncConnection.connect(
        settings.dsn,
        autocommit=True,
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
        **connect_kwargs(settings),
    )


def reason(exc: BaseException) -> str:
    """libpq's message, first line only (it can run over several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_pool(settings: PgSettings, *, wait: bool = True) -> ConnectionPool[Any]:
    """The process's pool, opened; `wait`: raise StoreUnavailable if no connection can be made
    within the connect timeout (at start, so that a wrong DSN is said at once)."""
    pool: ConnectionPool[Any] = ConnectionPool(
        settings.dsn,
        min_size=1,
        max_size=settings.pool_size,
        # Called for every new connection: a rotated password file is read again.
        kwargs=lambda: {"autocommit": True, **connect_kwargs(settings)},
        check=check,  # a dead connection is replaced, not handed out
        open=False,
        name=settings.application_name,
        timeout=CONNECT_TIMEOUT + 1,  # waiting for a free connection
        reconnect_timeout=RECONNECT_TIMEOUT,
    )
    pool.open(wait=False)
    if wait:
        try:
            pool.wait(timeout=CONNECT_TIMEOUT + 1)
        except PoolTimeout:
            pool.close()
            connect(settings).close()  # raises StoreUnavailable with libpq's reason
            raise StoreUnavailable("no database connection in time") from None
    return pool


async def open_async_pool(settings: PgSettings) -> AsyncConnectionPool[Any]:
    """The asyncio pool of the queue (same settings); raises StoreUnavailable as `open_pool`."""

    async def fresh_kwargs() -> dict[str, Any]:
        return {"autocommit": True, **connect_kwargs(settings)}

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.dsn,
        min_size=1,
        max_size=settings.pool_size,
        kwargs=fresh_kwargs,
        check=check_async,
        open=False,
        name=f"{settings.application_name} queue",
        timeout=CONNECT_TIMEOUT + 1,
        reconnect_timeout=RECONNECT_TIMEOUT,
    )
    await pool.open(wait=False)
    try:
        await pool.wait(timeout=CONNECT_TIMEOUT + 1)
    except PoolTimeout:
        await pool.close()
        connect(settings).close()  # raises StoreUnavailable with libpq's reason
        raise StoreUnavailable("no database connection in time") from None
    return pool
