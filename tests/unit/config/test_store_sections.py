"""[store]: the SQLite default, PostgreSQL with a DSN, and what a wrong [store] says."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.config import parse, problems


def test_sqlite_is_the_default(tmp_path: Path) -> None:
    store = parse("", tmp_path).store
    assert store.backend == "sqlite"
    assert store.dsn is None and store.password_file is None


def test_postgresql_with_dsn_pool_timeout_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pg.pw").write_text("secret\n")
    store = parse(
        '[store]\nbackend = "postgresql"\ndsn = "host=db port=5432 user=hato dbname=hato"\n'
        'password_file = "pg.pw"\npool_size = 20\nstatement_timeout = 5\n',
        tmp_path,
    ).store
    assert store.backend == "postgresql"
    assert store.dsn == "host=db port=5432 user=hato dbname=hato"
    assert store.password_file == tmp_path / "pg.pw"
    assert (store.pool_size, store.statement_timeout) == (20, 5.0)


def test_lease_time_is_15_minutes_unless_set(tmp_path: Path) -> None:
    pg = '[store]\nbackend = "postgresql"\ndsn = "host=db"\n'
    assert parse(pg, tmp_path).store.lease_time == 900.0
    short = parse(pg + "lease_time = 5\n[delivery]\nattempt_timeout = 3\n", tmp_path)
    assert short.store.lease_time == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('backend = "postgresql"', 'store: backend = "postgresql" needs dsn = '),
        ('backend = "mysql"', "store.backend: expected "),
        ('dsn = "host=db"', "store: dsn, password_file and node are for backend"),
        ('node = "a"', "store: dsn, password_file and node are for backend"),
        ('backend = "postgresql"\ndsn = "host=db"\nnode = "a b"', 'store.node: "a b" is not'),
        ('backend = "postgresql"\ndsn = "host=db"\nheartbeat = 0.1', "store.heartbeat: must be"),
        (
            'backend = "postgresql"\ndsn = "host=db password=hunter2"',
            "store.dsn: must not contain the password",
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://hato:hunter2@db/hato"',
            "store.dsn: must not contain the password",
        ),
        ('backend = "postgresql"\ndsn = "host=db"\npool_size = 0', "store.pool_size: must be"),
        (
            'backend = "postgresql"\ndsn = "host=db"\nstatement_timeout = 0',
            "store.statement_timeout: must be",
        ),
        (
            'backend = "postgresql"\ndsn = "host=db"\npassword_file = "nope"',
            "store.password_file: file ",
        ),
        ('backend = "postgresql"\ndsn = "host=db"\nlease_time = 0', "store.lease_time: must be"),
        ('backend = "postgresql"\ndsn = "host=db"\nlease_time = "soon"', "store.lease_time: "),
        (
            # The default delivery.attempt_timeout is 600 s: an attempt would outlive its lease.
            'backend = "postgresql"\ndsn = "host=db"\nlease_time = 300',
            "store.lease_time: 300 s must be more than delivery.attempt_timeout (600 s)",
        ),
        ("pool = 3", "store.pool: unknown key"),
    ],
)
def test_wrong_store_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(f"[store]\n{text}\n", tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found
    assert "hunter2" not in found[0]
