"""`hato dovecot-auth` on the shared PostgreSQL store (issue 16): called as Dovecot's
checkpassword passdb calls it (user NUL password NUL on file descriptor 3, the reply program as
its arguments), on a node that has no users.db, it logs in a user `hato user add` added with
another node's configuration, and says 111 (a temporary failure: Dovecot answers "try again",
never "wrong password") while the database is down; and a private Dovecot configured by node B's
`hato dovecot-config` says so over IMAP."""

from __future__ import annotations

import dataclasses
import imaplib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from peers.dovecot_imap import DovecotImap, VmailHato
from peers.hato import hato_binary
from peers.net import LOOPBACK
from peers.postgres import PASSWORD, PostgresServer
from peers.server import DomainSetup

from hato.pgstore import migrate

CHECKPASSWORD_FAILED = 1
CHECKPASSWORD_TEMPFAIL = 111
BOB = "Bob@Users.test"
_FD3 = ("sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh")  # runs its arguments, stdin on fd 3
BOB_PASSWORD = "correct horse battery staple"


def _node(work: Path, dsn: str, password_file: Path) -> Path:
    """The configuration of one node on the shared store (its own data directory)."""
    data = work / "data"
    data.mkdir(parents=True)
    config = work / "hato.toml"
    config.write_text(
        "[server]\n"
        'hostname = "hato.test"\n'
        f'data_dir = "{data}"\n\n'
        '[[listener]]\nrole = "mx"\naddress = "127.0.0.1:2525"\n\n'
        '[[domain]]\nname = "users.test"\n\n'
        f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_file = "{password_file}"\n',
        encoding="utf-8",
    )
    return config


def _hato(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # the file only
    return subprocess.run(
        [hato_binary(), *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _dovecot_auth(config: Path, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """`hato dovecot-auth` as Dovecot runs it: the login on fd 3 (here stdin, moved there by
    the shell), `printenv USER` as the reply program."""
    return subprocess.run(
        [*_FD3, hato_binary(), "dovecot-auth", "--config", str(config), "printenv", "USER"],
        input=f"{user}\0{password}\0",
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        check=False,
    )


def _nodes(workdir: Path, pg_dsn: str, postgres: PostgresServer) -> tuple[Path, Path]:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    assert postgres.password_file is not None
    return (
        _node(workdir / "a", pg_dsn, postgres.password_file),
        _node(workdir / "b", pg_dsn, postgres.password_file),
    )


def test_a_user_added_on_node_a_logs_in_through_dovecot_on_node_b(
    workdir: Path, pg_dsn: str, postgres: PostgresServer
) -> None:
    a, b = _nodes(workdir, pg_dsn, postgres)
    added = _hato(a, "user", "add", BOB, stdin=BOB_PASSWORD + "\n")
    assert added.returncode == 0 and "PostgreSQL store" in added.stdout, added.stderr

    done = _dovecot_auth(b, BOB, BOB_PASSWORD)
    assert (done.returncode, done.stdout) == (0, "bob@users.test\n"), done.stderr
    assert not (workdir / "b" / "data" / "users.db").exists()  # not read, not made
    assert _dovecot_auth(b, BOB, "not the password").returncode == CHECKPASSWORD_FAILED
    assert _dovecot_auth(b, "carol@users.test", BOB_PASSWORD).returncode == CHECKPASSWORD_FAILED

    # A password changed on node A is the one node B's Dovecot checks, at once.
    changed = _hato(a, "user", "passwd", BOB, stdin="another long passphrase\n")
    assert changed.returncode == 0, changed.stderr
    assert _dovecot_auth(b, BOB, BOB_PASSWORD).returncode == CHECKPASSWORD_FAILED
    assert _dovecot_auth(b, BOB, "another long passphrase").returncode == 0


def test_the_database_down_is_a_temporary_failure_not_a_wrong_password(
    workdir: Path, pg_dsn: str, postgres: PostgresServer
) -> None:
    a, b = _nodes(workdir, pg_dsn, postgres)
    added = _hato(a, "user", "add", BOB, stdin=BOB_PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    postgres.stop()
    try:
        for password in (BOB_PASSWORD, "not the password"):
            done = _dovecot_auth(b, BOB, password)
            # checkpassword's 111 (https://cr.yp.to/checkpwd/interface.html): try again later.
            assert done.returncode == CHECKPASSWORD_TEMPFAIL, done.stderr
            assert done.stdout == ""  # the reply program did not run
            assert "Traceback" not in done.stderr
            assert done.stderr.count("\n") == 1, done.stderr  # one line, for Dovecot's log
            assert "hato dovecot-auth: the PostgreSQL store is unreachable: " in done.stderr, (
                done.stderr
            )
    finally:
        postgres.start()
    assert _dovecot_auth(b, BOB, BOB_PASSWORD).returncode == 0


def test_imap_on_node_b_logs_in_a_user_added_on_node_a_and_says_try_later_when_down(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, require_peer: Callable[[str], str]
) -> None:
    require_peer("dovecot")
    a, _ = _nodes(workdir, pg_dsn, postgres)
    added = _hato(a, "user", "add", BOB, stdin=BOB_PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert postgres.password_file is not None
    node_b = VmailHato(workdir / "node-b" / "data")  # serves example.test, no account of its own
    node_b.setup = dataclasses.replace(
        node_b.setup,
        domains=(DomainSetup("users.test"),),
        store=(pg_dsn, postgres.password_file),
    )
    node_b.start()
    try:
        imap = DovecotImap.for_hato(node_b, workdir / "dovecot")
        imap.start()
        try:
            with imaplib.IMAP4(LOOPBACK, imap.port) as client:
                try:
                    client.login(BOB, BOB_PASSWORD)
                except imaplib.IMAP4.error as exc:
                    raise AssertionError(f"{exc}: {imap.log_text()}") from exc
            failed = pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED")
            with imaplib.IMAP4(LOOPBACK, imap.port) as client, failed:
                client.login(BOB, "not the password")
            postgres.stop()
            try:
                # checkpassword's 111: Dovecot's "Temporary authentication failure".
                later = pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE")
                with imaplib.IMAP4(LOOPBACK, imap.port) as client, later:
                    client.login(BOB, BOB_PASSWORD)
            finally:
                postgres.start()
            assert "the PostgreSQL store is unreachable" in imap.log_text(), imap.log_text()
        finally:
            imap.stop()
    finally:
        node_b.stop()
