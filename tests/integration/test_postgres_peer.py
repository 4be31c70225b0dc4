"""The private PostgreSQL of the tests: it starts, takes the password it was given, refuses a
wrong one, and comes back after a stop with its data."""

from __future__ import annotations

import psycopg
import pytest
from peers.postgres import PASSWORD, PostgresServer


def test_private_cluster_answers_with_its_password(pg_dsn: str, postgres: PostgresServer) -> None:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n integer)")
        conn.execute("INSERT INTO kept VALUES (42)")
        row = conn.execute("SHOW port").fetchone()
    assert row is not None and int(row[0]) == postgres.port
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_dsn, password="wrong").close()
    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, password=PASSWORD, connect_timeout=2).close()
    postgres.start()
    with psycopg.connect(pg_dsn, password=PASSWORD) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]
