"""Fixtures for every test directory: the private PostgreSQL (tests/kit/postgres.py) that the
queue contract suite (tests/contract) and the integration tests of the PostgreSQL store use,
the process umask kept as each test found it, and Hypothesis's settings without time limits.
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from kit.postgres import pg_dsn, pg_pool, pg_settings, postgres

__all__ = ["pg_dsn", "pg_pool", "pg_settings", "postgres"]

# No time limits on a property test's examples: Hypothesis's default deadline (200 ms an
# example) and its too_slow health check measure the machine, and on a loaded 2-core CI
# machine an example that once takes longer fails the test ("DeadlineExceeded", "Unreliable
# test timings"). A test's own @settings still sets what it sets.
settings.register_profile("hato", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hato")


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
