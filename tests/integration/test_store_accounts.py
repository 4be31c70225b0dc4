"""Accounts on the shared PostgreSQL store: the UserStore contract on a real PostgreSQL, and two
`hato serve` nodes (127.0.0.2 and 127.0.0.4) that see an account added or removed on one of
them at once, at AUTH and at RCPT."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.clients import auth_plain, submissions_session
from peers.hato import HatoServer, hato_binary
from peers.net import RawSession
from peers.postgres import PASSWORD, PostgresServer
from peers.server import USER_PASSWORD, AuthSetup, DomainSetup, MailSetup, submission_setup
from peers.tls import TestCA
from psycopg_pool import ConnectionPool

from hato.accounts import UnknownUser, UserExists
from hato.accounts.authcache import VerifiedCache
from hato.accounts.postgres import PgUserStore
from hato.model import Address
from hato.pgstore import PgSettings, migrate, open_pool

ALICE = Address("alice", "users.test")


def _migrate(dsn: str) -> None:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)


@pytest.fixture
def pool(pg_dsn: str, postgres: PostgresServer) -> Iterator[ConnectionPool[psycopg.Connection]]:
    _migrate(pg_dsn)
    pool = open_pool(PgSettings(pg_dsn, postgres.password_file, pool_size=2))
    yield pool
    pool.close()


def test_user_store_contract_on_postgresql(pool: ConnectionPool[psycopg.Connection]) -> None:
    store = PgUserStore(pool, scram_iterations=4096)
    other = PgUserStore(pool, scram_iterations=4096)  # another node, same database
    assert not store.exists(ALICE)
    store.add(ALICE, "first password")
    assert other.exists(Address("Alice", "USERS.test"))  # accounts ignore case
    with pytest.raises(UserExists):
        other.add(ALICE, "again")
    assert other.verify(ALICE, "first password")
    assert not other.verify(ALICE, "wrong")
    assert not other.verify(Address("nobody", "users.test"), "first password")
    scram = other.scram_credentials(ALICE)
    assert scram is not None and scram.iterations == 4096
    store.set_password(ALICE, "second password")
    assert not other.verify(ALICE, "first password") and other.verify(ALICE, "second password")
    assert other.list() == [ALICE]
    with pytest.raises(UnknownUser):
        store.set_password(Address("bob", "users.test"), "x")
    assert store.remove(ALICE) and not store.remove(ALICE)
    assert not other.exists(ALICE) and other.list() == []


def test_no_scram_keys_are_kept_when_scram_is_off(
    pool: ConnectionPool[psycopg.Connection],
) -> None:
    PgUserStore(pool, scram_iterations=4096).add(ALICE, "a password")
    off = PgUserStore(pool, scram_iterations=0)
    assert off.verify(ALICE, "a password")
    assert off.scram_credentials(ALICE) is None


def test_a_password_changed_on_another_node_is_not_remembered(
    pool: ConnectionPool[psycopg.Connection],
) -> None:
    """[auth] cache_ttl: node A remembers alice's login; node B changes the password; A's
    next login with the old one fails (the remembered HMAC covers the stored hash)."""
    a = PgUserStore(pool, scram_iterations=0, verified_cache=VerifiedCache(300, 10))
    b = PgUserStore(pool, scram_iterations=0)
    b.add(ALICE, "first password")
    assert a.verify(ALICE, "first password") and a.verify(ALICE, "first password")
    b.set_password(ALICE, "second password")
    assert not a.verify(ALICE, "first password")
    assert a.verify(ALICE, "second password")
    assert b.remove(ALICE) and not a.verify(ALICE, "second password")


def _auth(server: HatoServer, ca: TestCA, login: str) -> int:
    with submissions_session(server, ca) as session:
        return auth_plain(session, login)[0]


def _rcpt(server: HatoServer, address: str) -> int:
    with RawSession(server.host, server.port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<someone@example.net>")[0] == 250
        return session.command(f"RCPT TO:<{address}>".encode())[0]


def _user(server: HatoServer, *args: str, password: str = USER_PASSWORD) -> None:
    done = subprocess.run(
        [hato_binary(), "user", *args, "--config", str(server.config)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HATO_HOME": str(server.data_dir)},
    )
    assert done.returncode == 0, done.stderr
    assert "PostgreSQL store" in done.stdout


def test_an_account_added_on_node_a_authenticates_on_node_c(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, test_ca: TestCA
) -> None:
    _migrate(pg_dsn)
    base = submission_setup(test_ca.tls_files())
    store = (pg_dsn, postgres.password_file)
    domains = (DomainSetup("users.test", users=("alice",)),)
    a = HatoServer(
        workdir / "a",
        MailSetup(domains=domains, submission=True, tls=base.tls, store=store),
        host="127.0.0.2",
    )
    c = HatoServer(
        workdir / "c",
        MailSetup(domains=(DomainSetup("users.test"),), submission=True, tls=base.tls, store=store),
        host="127.0.0.4",
    )
    a.start()
    try:
        c.start()
        try:
            # alice was added (by the harness, `hato user add`) with node A's configuration.
            assert _auth(c, test_ca, "alice@users.test") == 235
            assert _rcpt(c, "bob@users.test") == 550
            _user(a, "add", "bob@users.test")
            assert _auth(c, test_ca, "bob@users.test") == 235  # at once: no reload, no cache
            assert _rcpt(c, "bob@users.test") == 250
            _user(c, "remove", "bob@users.test")
            assert _auth(a, test_ca, "bob@users.test") == 535
            assert _rcpt(a, "bob@users.test") == 550
        finally:
            c.stop()
    finally:
        a.stop()


def _send_as_alice(server: HatoServer, ca: TestCA) -> tuple[int, bytes]:
    """AUTH as alice, one message to herself; the MAIL FROM or final reply."""
    with RawSession(server.host, server.submissions_port, tls=ca.client_context()) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        token = base64.b64encode(f"\0alice@users.test\0{USER_PASSWORD}".encode())
        assert session.command(b"AUTH PLAIN " + token)[0] == 235
        code, lines = session.command(b"MAIL FROM:<alice@users.test>")
        if code != 250:
            return code, lines[-1]
        assert session.command(b"RCPT TO:<alice@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        code, lines = session.command(b"Subject: limit\r\n\r\nhello\r\n.")
        return code, lines[-1]


def test_a_per_user_hourly_limit_holds_across_nodes(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, test_ca: TestCA
) -> None:
    _migrate(pg_dsn)
    tls = submission_setup(test_ca.tls_files()).tls
    store = (pg_dsn, postgres.password_file)
    nodes = [
        HatoServer(
            workdir / name,
            MailSetup(
                domains=(DomainSetup("users.test", users=users),),
                submission=True,
                tls=tls,
                store=store,
                messages_per_hour=3,
            ),
            host=host,
        )
        for name, users, host in (("a", ("alice",), "127.0.0.2"), ("c", (), "127.0.0.4"))
    ]
    for node in nodes:
        node.start()
    try:
        replies = [_send_as_alice(nodes[n], test_ca) for n in (0, 1, 0, 1, 0)]
        # Three messages an hour in all, whichever node they went through; then RFC 5321
        # §4.2.5 451 with RFC 3463 X.7.1 at MAIL FROM, on both nodes.
        assert [code for code, _ in replies] == [250, 250, 250, 451, 451], replies
        assert all(line.startswith(b"451 4.7.1") for _, line in replies[3:]), replies
    finally:
        for node in nodes:
            node.stop()


def _plain(server: HatoServer, ca: TestCA, password: str) -> int:
    """A connection to the submissions port and one AUTH PLAIN as alice: the first reply that
    is not a success of the dialog (the greeting of a blocked client is 421)."""
    with RawSession(server.host, server.submissions_port, tls=ca.client_context()) as session:
        code = session.reply()[0]
        if code != 220:
            return code
        assert session.command(b"EHLO client.test")[0] == 250
        token = base64.b64encode(f"\0alice@users.test\0{password}".encode())
        return session.command(b"AUTH PLAIN " + token)[0]


def test_an_auth_block_on_one_node_applies_on_the_others(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, test_ca: TestCA
) -> None:
    _migrate(pg_dsn)
    tls = submission_setup(test_ca.tls_files()).tls
    auth = AuthSetup(failure_delay=0.0, max_failures=3, block_time=60.0)
    nodes = [
        HatoServer(
            workdir / name,
            MailSetup(
                domains=(DomainSetup("users.test", users=users),),
                submission=True,
                tls=tls,
                store=(pg_dsn, postgres.password_file),
                auth=auth,
            ),
            host=host,
        )
        for name, users, host in (("a", ("alice",), "127.0.0.2"), ("c", (), "127.0.0.4"))
    ]
    for node in nodes:
        node.start()
    try:
        a, c = nodes
        # Failures on both nodes count together: the third one (on A) blocks the client.
        assert [_plain(n, test_ca, "wrong") for n in (a, c)] == [535, 535]
        assert _plain(a, test_ca, "wrong") == 421
        # Blocked everywhere, even with the right password (4.7.0, try again later).
        assert _plain(c, test_ca, USER_PASSWORD) == 421
        assert _plain(a, test_ca, USER_PASSWORD) == 421
        # An admin on C lifts it (`hato user unblock`, through C): A, which blocked it and
        # keeps its own blocks in memory for when the store is down, asks the store.
        listed = c.hato("user", "blocked")
        assert listed.returncode == 0 and " blocked until " in listed.stdout, listed.stderr
        client = listed.stdout.split()[0]
        assert a.hato("user", "blocked").stdout == listed.stdout  # one list, on every node
        done = c.hato("user", "unblock", client)
        assert done.returncode == 0, done.stderr
        assert c.wait_for_log(rf"event=admin-unblock client={re.escape(client)}")
        assert [_plain(n, test_ca, USER_PASSWORD) for n in (a, c)] == [235, 235]
    finally:
        for node in nodes:
            node.stop()
