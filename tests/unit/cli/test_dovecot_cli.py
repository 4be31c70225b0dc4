"""`hato dovecot-auth` (run at every IMAP login) and `hato dovecot-config` with either account
store: what the checkpassword program imports, and whom the printed configuration runs it as."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hato.accounts import UserStore
from hato.cli.dovecot import render, unreachable_program
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


@pytest.mark.skipif(os.geteuid() != 0, reason="a directory closed to another user needs root")
def test_dovecot_config_warns_when_the_auth_user_cannot_run_hato() -> None:
    """A Python under /root (pyenv): Dovecot's checkpassword exec failed ("Temporary
    authentication failure" at every login) and only Dovecot's log said why."""
    with tempfile.TemporaryDirectory() as top:  # under /tmp: open to nobody (tmp_path is not)
        Path(top).chmod(0o755)
        _warns_of_what_is_closed(Path(top))


def _warns_of_what_is_closed(top: Path) -> None:
    closed = top / "root-only"
    closed.mkdir(mode=0o700)
    python = closed / "python3"
    python.write_text("")
    python.chmod(0o755)
    opened = top / "hato"
    opened.write_text("")
    opened.chmod(0o755)
    said = unreachable_program("nobody", (opened, python))
    assert said is not None and f"cannot run {python} ({closed} is closed to it)" in said
    assert f"chmod o+x {closed}" in said
    assert unreachable_program("nobody", (opened,)) is None
    assert unreachable_program("root", (opened, python)) is None
