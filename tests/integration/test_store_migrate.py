"""`hato store migrate` on a real PostgreSQL, and `hato serve`'s refusal to start against a
database at another schema version (one line, exit 78) or one it cannot reach (exit 75)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from peers.hato import hato_binary
from peers.net import free_port
from peers.postgres import PASSWORD, PostgresServer

from hato.pgstore import SCHEMA_VERSION


def _config(workdir: Path, dsn: str, password_file: Path) -> Path:
    config = workdir / "hato.toml"
    config.write_text(
        f"""
[server]
hostname = "mx.example.org"
data_dir = "{workdir / "data"}"

[[listener]]
role = "mx"
address = "127.0.0.1:{free_port()}"

[[domain]]
name = "example.org"

[store]
backend = "postgresql"
dsn = "{dsn}"
password_file = "{password_file}"
"""
    )
    return config


def _hato(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hato_binary(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or {k: v for k, v in os.environ.items() if k != "PGPASSWORD"},
    )


def _said(done: subprocess.CompletedProcess[str]) -> list[str]:
    """What the command told the admin on stderr (the server's log lines go there too)."""
    return [line for line in done.stderr.splitlines() if line.startswith("hato: ")]


def test_migrate_then_serve_checks_the_version(
    workdir: Path, pg_dsn: str, postgres: PostgresServer
) -> None:
    config = _config(workdir, pg_dsn, postgres.password_file)
    # Not migrated yet: the server refuses to start, in one line, with the fix.
    refused = _hato("serve", "--config", str(config))
    assert refused.returncode == 78, refused.stderr
    assert _said(refused) == [
        f"hato: store: the PostgreSQL store has no Hato schema, this Hato needs version "
        f"{SCHEMA_VERSION}: run `hato store migrate` (once, from any node)"
    ]
    first = _hato("store", "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "applied migration 1: " in first.stdout
    versions = ",".join(str(v) for v in range(1, SCHEMA_VERSION + 1))
    assert (  # no server to log to: on stderr, with who ran it
        f"event=admin-store-migrate applied={versions} schema={SCHEMA_VERSION} uid={os.getuid()}"
        in first.stderr
    )
    again = _hato("store", "migrate", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert "admin-store-migrate" not in again.stderr  # nothing changed, nothing logged
    assert again.stdout.strip() == f"store: schema version {SCHEMA_VERSION} (already)"
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        # Another node migrated to a newer Hato: this one refuses to run against it.
        conn.execute("INSERT INTO schema_version (version, description) VALUES (999, 'later')")
    newer = _hato("serve", "--config", str(config))
    assert newer.returncode == 78, newer.stderr
    assert "has schema version 999, newer than this Hato's" in newer.stderr
    assert len(_said(newer)) == 1
    assert PASSWORD not in newer.stderr + first.stdout + first.stderr


def test_password_from_pgpassword_and_unreachable_store(
    workdir: Path, pg_dsn: str, postgres: PostgresServer
) -> None:
    config = workdir / "env.toml"
    text = _config(workdir, pg_dsn, postgres.password_file).read_text()
    config.write_text(text.replace(f'password_file = "{postgres.password_file}"\n', ""))
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    done = _hato("store", "migrate", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    wrong = _hato("store", "migrate", "--config", str(config), env={**env, "PGPASSWORD": "no"})
    assert wrong.returncode == 75
    assert wrong.stderr.startswith("hato: store.dsn: the PostgreSQL store is unreachable: ")
    assert "password authentication failed" in wrong.stderr
    closed = workdir / "closed.toml"
    closed.write_text(text.replace(f"port={postgres.port}", f"port={free_port()}"))
    down = _hato("serve", "--config", str(closed))
    assert down.returncode == 75, down.stderr
    assert _said(down)[0].startswith("hato: store.dsn: the PostgreSQL store is unreachable: ")
