"""Fixtures for every test directory: the private PostgreSQL (tests/kit/postgres.py) that the
queue contract suite (tests/contract) and the integration tests of the PostgreSQL store use.
"""

from kit.postgres import pg_dsn, postgres

__all__ = ["pg_dsn", "postgres"]
