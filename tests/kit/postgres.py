"""The private PostgreSQL of the PostgreSQL store's tests, as pytest fixtures (registered for
every test directory by tests/conftest.py): one cluster per test worker, a new database per
test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.net import in_ci
from peers.postgres import PostgresServer, find_bindir


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
