"""`hato dovecot-auth` (run at every IMAP login) and `hato dovecot-config` with either account
store: what the checkpassword program imports, and whom the printed configuration runs it as."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from hato.accounts import UserStore
from hato.cli.dovecot import render
from hato.model import Address
from kit.config import CLI, parse

_HEAVY = ("psycopg", "hato.boot.store", "hato.crypto", "hato.queue", "hato.policy", "hato.pgstore")


def test_dovecot_auth_on_sqlite_imports_no_store_it_does_not_use(tmp_path: Path) -> None:
    """Start-up cost: on users.db, neither psycopg nor the rooms hato.boot.store wires."""
    (tmp_path / "hato.toml").write_text(CLI)
    (tmp_path / "data").mkdir()
    store = UserStore(tmp_path / "data" / "users.db", scram_iterations=0)
    store.add(Address("alice", "example.org"), "a long enough passphrase")
    store.close()
    code = (
        "import sys; from hato.cli import main; "
        "code = main(['dovecot-auth', '--config', 'hato.toml', 'true']); "
        f"print(code, sorted(m for m in {_HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        ["sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh", sys.executable, "-c", code],
        input="alice@example.org\0not the passphrase\0",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "HATO_HOME"},
        timeout=60,
        check=False,
    )
    assert done.stdout == "1 []\n", done.stderr  # exit 1: a wrong password


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user (needs root)")
def test_dovecot_config_runs_the_auth_process_as_who_can_read_the_accounts(
    tmp_path: Path,
) -> None:
    nobody = pwd.getpwnam("nobody")
    local = '\n[local]\nmailbox_owner = "nobody"\n'
    secret = tmp_path / "pg-password"
    secret.write_text("secret\n")
    os.chown(secret, nobody.pw_uid, nobody.pw_gid)
    store = f'\n[store]\nbackend = "postgresql"\ndsn = "host=db.test"\npassword_file = "{secret}"\n'
    on_pg = render(parse(local + store, tmp_path, server='data_dir = "data"'), None, "*", 143, 0)
    assert "service auth {\n  user = nobody\n}" in on_pg  # the password file's owner
    (tmp_path / "data").mkdir()
    on_sqlite = render(parse(local, tmp_path, server='data_dir = "data"'), None, "*", 143, 0)
    assert "service auth {\n  user = root\n}" in on_sqlite  # users.db's (here: ours)
