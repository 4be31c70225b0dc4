"""The private PostgreSQL of the PostgreSQL store's tests, as pytest fixtures (registered for
every test directory by tests/conftest.py): one cluster per test worker, a new database per
test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.net import in_ci
from peers.postgres import PASSWORD, PostgresServer, find_bindir
from psycopg_pool import ConnectionPool

from hato.pgstore import PgSettings, migrate, open_pool


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster (initdb in a temporary directory, a loopback port), one per
    test worker; missing binaries: fail in CI, skip (with the reason) elsewhere."""
    bindir = find_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
            ".ci/run installs Debian's postgresql)"
        )
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="hato-it-pg-"))
    server = PostgresServer(path, bindir)
    server.start()
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest, postgres: PostgresServer) -> str:
    """The DSN (no password: it is PGPASSWORD or postgres.password_file) of a new, empty
    database of the private cluster, for this test alone."""
    if not postgres.alive():
        postgres.start()
    name = f"t{len(_DATABASES)}_{os.getpid()}"
    _DATABASES.append(name)
    return postgres.create_database(name)


_DATABASES: list[str] = []


@pytest.fixture
def pg_settings(pg_dsn: str, postgres: PostgresServer) -> PgSettings:
    """The store's settings for this test's own database, migrated to the current schema."""
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    return PgSettings(pg_dsn, postgres.password_file, pool_size=2)


@pytest.fixture
def pg_pool(pg_settings: PgSettings) -> Iterator[ConnectionPool[psycopg.Connection]]:
    """A connection pool on `pg_settings`' database, closed after the test."""
    pool = open_pool(pg_settings)
    yield pool
    pool.close()
