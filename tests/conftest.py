"""Fixtures for every test directory: the private PostgreSQL (tests/kit/postgres.py) that the
queue contract suite (tests/contract) and the integration tests of the PostgreSQL store use,
and the process umask kept as each test found it.
"""

import os
from collections.abc import Iterator

import pytest

from kit.postgres import pg_dsn, pg_pool, pg_settings, postgres

__all__ = ["pg_dsn", "pg_pool", "pg_settings", "postgres"]


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """`server.datadir.locked` sets the process umask to 077 for good (right for a server);
    a test that calls it in the pytest process must not leave every later test on that
    worker making directories other users cannot enter (Postfix's queue, a Maildir tree
    served to `nobody`)."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)
