"""`hato user` and `hato key` on the shared PostgreSQL store behave as on SQLite and fail the
same way: a store that answers with an error is one line and exit 1, one that does not answer
is exit 75 (EX_TEMPFAIL), never a traceback (issue 11: the CLI sees model.storeerror's errors,
not psycopg's)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import psycopg
import pytest
from peers.net import free_port
from peers.postgres import PASSWORD, PostgresServer
from psycopg_pool import ConnectionPool

from hato.pgstore import migrate
from hato.policy.authlimit import AuthThrottleSettings
from hato.policy.authlimit_pg import PgAuthThrottle
from kit.clock import FakeClock
from kit.commands import ADMIN_LOG, run
from kit.config import CLI, command_workdir

Y2100 = 4102444800.0  # 2100-01-01T00:00:00Z


def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str, secret: Path) -> Path:
    store = f'\n[store]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_file = "{secret}"\n'
    workdir = command_workdir(tmp_path, monkeypatch, CLI + store)
    (workdir / "data").mkdir()
    return workdir


def test_user_and_key_commands_on_postgresql(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_dsn: str,
    postgres: PostgresServer,
) -> None:
    _workdir(tmp_path, monkeypatch, pg_dsn, postgres.password_file)
    # Not migrated: the database refuses the statement; one line naming the store, exit 1.
    code, out, err = run(capsys, "user", "list")
    assert (code, out) == (1, "") and err.startswith("hato: the PostgreSQL store failed: ")
    assert '"users" does not exist' in err and "Traceback" not in err
    code, out, err = run(capsys, "key", "show", "alice@example.org")
    assert (code, out) == (1, "") and err.startswith("hato: the PostgreSQL store failed: ")
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough passphrase\n"))
    assert run(capsys, "user", "add", "alice@example.org") == (
        0,
        "added alice@example.org (in the PostgreSQL store)\n",
        "",
    )
    assert run(capsys, "user", "list") == (0, "alice@example.org\n", "")
    assert run(capsys, "key", "policy", "alice@example.org", "plaintext")[0] == 0
    code, out, err = run(capsys, "key", "show", "alice@example.org")
    assert (code, out, err) == (
        1,
        "",
        "hato: no key for alice@example.org (see: hato key import alice@example.org FILE)\n",
    )
    assert run(capsys, "user", "remove", "alice@example.org")[0] == 0
    assert run(capsys, "user", "list") == (0, "", "")


def test_an_unreachable_store_is_exit_75_for_user_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("x\n")
    secret.chmod(0o600)
    dsn = f"postgresql://hato@127.0.0.1:{free_port()}/hato?connect_timeout=2"
    _workdir(tmp_path, monkeypatch, dsn, secret)
    for argv in (("user", "list"), ("key", "show", "alice@example.org")):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (75, ""), err
        assert err.startswith("hato: store.dsn: the PostgreSQL store is unreachable: ")


def test_held_users_are_listed_and_released_on_the_shared_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_dsn: str,
    postgres: PostgresServer,
) -> None:
    """`hato user held` / `release` on `send_accounts`, which every node's limiter reads per
    command: a release from any node lets the user send on all of them."""
    _workdir(tmp_path, monkeypatch, pg_dsn, postgres.password_file)
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
        assert run(capsys, "user", "held") == (
            0,
            "",
            "no user is held (in the PostgreSQL store)\n",
        )
        conn.execute(
            'INSERT INTO send_accounts ("user", held_until, alerted_until) VALUES'
            " ('bob@example.org', 4102444800, 0), ('alice@example.org', 'Infinity', 0),"
            " ('old@example.org', 1, 0)"  # a hold that ended long ago
        )
        conn.execute(
            "INSERT INTO sent (\"user\", minute, recipients) VALUES ('bob@example.org', 1, 9)"
        )
        assert run(capsys, "user", "held") == (
            0,
            "alice@example.org held until released (hold_time = 0)\n"
            "bob@example.org held until 2100-01-01T00:00:00+00:00\n",
            "",
        )
        code, out, err = run(capsys, "user", "release", "Bob@Example.org")
        assert (code, out) == (
            0,
            "released bob@example.org: their mail is accepted again (in the PostgreSQL store)\n",
        )
        assert "event=admin-unhold user=bob@example.org" in ADMIN_LOG[-1]
        held = conn.execute('SELECT "user" FROM send_accounts ORDER BY "user"').fetchall()
        assert held == [("alice@example.org",), ("old@example.org",)]
        assert conn.execute("SELECT recipients FROM sent").fetchall() == [(0,)]  # spike count
        code, out, err = run(capsys, "user", "release", "bob@example.org")
        assert (code, out) == (1, "")
        assert err == (
            "hato: bob@example.org is not held (in the PostgreSQL store; see: hato user held);"
            " nothing changed\n"
        )


def test_auth_blocks_are_listed_and_lifted_on_the_shared_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_dsn: str,
    postgres: PostgresServer,
) -> None:
    """`hato user blocked` / `unblock` on `auth_blocks`, which every node's throttle asks at
    each connection: a block that a node made (and keeps in its memory too, for when the store
    does not answer) and that the command lifted no longer holds on that node either."""
    _workdir(tmp_path, monkeypatch, pg_dsn, postgres.password_file)
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    assert run(capsys, "user", "blocked") == (
        0,
        "",
        "no client is blocked for failed AUTHs (in the PostgreSQL store)\n",
    )
    clock = FakeClock(Y2100)  # the block ends in 2100, whenever this runs
    kwargs = {"password": PASSWORD, "autocommit": True}
    with ConnectionPool(pg_dsn, kwargs=kwargs) as pool:
        node = PgAuthThrottle(clock, AuthThrottleSettings(max_failures=2, block_time=60), pool)
        node.record_failure("192.0.2.7", "bob@example.org")
        assert node.record_failure("192.0.2.7", "bob@example.org").blocked
        assert run(capsys, "user", "blocked") == (
            0,
            "192.0.2.7 blocked until 2100-01-01T00:01:00+00:00\n",
            "",
        )
        code, out, err = run(capsys, "user", "unblock", "192.0.2.7")
        assert (code, out) == (
            0,
            "unblocked 192.0.2.7: it may authenticate again at once (in the PostgreSQL store)\n",
        )
        assert "event=admin-unblock client=192.0.2.7" in ADMIN_LOG[-1]
        assert not node.blocked("192.0.2.7")  # the node that blocked it asks the store
        assert not node.record_failure("192.0.2.7", "bob@example.org").blocked  # counts anew
        code, out, err = run(capsys, "user", "unblock", "192.0.2.8")
        assert (code, out) == (1, "")
        assert err == (
            "hato: 192.0.2.8 is not blocked (in the PostgreSQL store; see: hato user blocked);"
            " nothing changed\n"
        )
