"""The pools of hato.pgstore check a connection before handing it out without a round trip
when it is healthy (issue 16: it was one more per use), and still replace one the server
closed (a restart, a failover, a terminated backend). On the private PostgreSQL."""

from __future__ import annotations

import asyncio
import select
from typing import Any

import psycopg
import pytest
from peers.postgres import PASSWORD, PostgresServer
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from hato.pgstore import PgSettings, open_async_pool, open_pool

BOUND = 30.0


def _terminate(dsn: str, pid: int, fileno: int) -> None:
    """End backend `pid` and wait until its connection (socket `fileno`) has it to read."""
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    readable, _, _ = select.select([fileno], [], [], BOUND)
    assert readable


def test_the_pool_checks_with_a_round_trip_only_a_connection_the_server_closed(
    pg_dsn: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    full: list[int] = []
    real = ConnectionPool.check_connection

    def counting(conn: psycopg.Connection[Any]) -> None:
        full.append(conn.info.backend_pid)
        real(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counting))
    pool = open_pool(PgSettings(pg_dsn, postgres.password_file, pool_size=1))
    try:
        for _ in range(3):
            with pool.connection() as conn:
                pid, fileno = conn.info.backend_pid, conn.fileno()
                conn.execute("SELECT 1")
        assert full == []  # healthy: no empty query before each use
        _terminate(pg_dsn, pid, fileno)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
        assert full == [pid]  # the closed one was checked, found dead and replaced
    finally:
        pool.close()


def test_the_queue_pool_does_the_same(
    pg_dsn: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    full: list[int] = []
    real = AsyncConnectionPool.check_connection

    async def counting(conn: psycopg.AsyncConnection[Any]) -> None:
        full.append(conn.info.backend_pid)
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counting))

    async def main() -> None:
        pool = await open_async_pool(PgSettings(pg_dsn, postgres.password_file, pool_size=1))
        try:
            for _ in range(3):
                async with pool.connection() as conn:
                    pid, fileno = conn.info.backend_pid, conn.fileno()
                    await conn.execute("SELECT 1")
            assert full == []
            await asyncio.to_thread(_terminate, pg_dsn, pid, fileno)
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT 1")
                assert await cursor.fetchone() == (1,)
                assert conn.info.backend_pid != pid
            assert full == [pid]
        finally:
            await pool.close()

    asyncio.run(main())
