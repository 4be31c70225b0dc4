"""What a node answers at each step while its PostgreSQL store cannot be reached: temporary
errors with enhanced status codes, never 250 for what needs the store, never a 5xx or a
dropped connection. RFC 4954 §6: AUTH when the account store is unreachable is 454 4.7.0; RFC
5321 §4.2.5 451 with RFC 3463 X.3.0 at MAIL (a sending limit to check), RCPT (an account to
look up) and DATA (the queue's commit)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.clients import submissions_session
from peers.hato import HatoServer
from peers.net import RawSession
from peers.postgres import PASSWORD, PostgresServer
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, submission_setup
from peers.tls import TestCA

from hato.pgstore import migrate


@pytest.fixture
def node(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, test_ca: TestCA
) -> Iterator[HatoServer]:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    server = HatoServer(
        workdir / "a",
        MailSetup(
            domains=(DomainSetup("users.test", users=("alice",)),),
            submission=True,
            tls=submission_setup(test_ca.tls_files()).tls,
            store=(pg_dsn, postgres.password_file),
            messages_per_hour=100,
        ),
        host="127.0.0.2",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if not postgres.alive():
            postgres.start()


def _code(reply: tuple[int, list[bytes]]) -> tuple[int, bytes]:
    code, lines = reply
    return code, lines[-1][4:9]


def _plain(user: str = "alice@users.test") -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{USER_PASSWORD}".encode())


def test_replies_while_the_store_is_down(
    node: HatoServer, postgres: PostgresServer, test_ca: TestCA
) -> None:
    logged_in = submissions_session(node, test_ca)
    try:
        assert logged_in.command(_plain())[0] == 235
        postgres.stop()
        # Submission, authenticated before: the sending limit cannot be checked.
        assert _code(logged_in.command(b"MAIL FROM:<alice@users.test>")) == (451, b"4.3.0")
    finally:
        logged_in.close()
    with submissions_session(node, test_ca) as session:
        # RFC 4954 §6: 454 4.7.0 Temporary authentication failure.
        assert _code(session.command(_plain())) == (454, b"4.7.0")
        assert _code(session.command(_plain())) == (454, b"4.7.0")  # the session goes on
    with RawSession(node.host, node.port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        mail = _code(session.command(b"MAIL FROM:<someone@example.net>"))
        assert mail in ((250, b"2.1.0"), (451, b"4.3.0")), mail
        if mail[0] == 250:
            assert _code(session.command(b"RCPT TO:<alice@users.test>")) == (451, b"4.3.0")
    postgres.start()
    # No restart: AUTH works again once the pool has a connection (the account store fails
    # fast for a moment after a failure, accounts/postgres.py RETRY_AFTER): 454 until then.
    deadline = time.monotonic() + 30
    with submissions_session(node, test_ca) as session:
        while (reply := _code(session.command(_plain())))[0] != 235:
            assert reply == (454, b"4.7.0"), reply
            assert time.monotonic() < deadline, node.log_text()[-5000:]
            time.sleep(0.2)
