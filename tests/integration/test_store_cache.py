"""The account and key answers a node keeps on the shared PostgreSQL store (model/notified.py,
issue 16), on a real PostgreSQL: kept only while LISTEN hato_directory is in effect, forgotten
at every change another node commits (the tables' triggers, migration 5), never kept when the
answer is "no" (no account, no key), and not served while the listening connection is cut."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import smtplib
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.postgres import PASSWORD, PostgresServer
from peers.server import DomainSetup, MailSetup
from psycopg_pool import ConnectionPool

from hato.accounts.postgres import PgUserStore
from hato.crypto.keys import KeyKind, PublicKey
from hato.crypto.keystore_pg import PgKeyStore
from hato.model import Address
from hato.model.notified import CHANNEL, NotifiedCache
from hato.pgstore import PgSettings, connect_listener, migrate
from hato.queue.postgres_listen import Listener
from kit.cryptokeys import Gpg

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
ALICE = Address("alice", "users.test")


class Counted:
    """The pool, counting the connections taken: one per look-up that went to the database."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool
        self.taken = 0

    def connection(
        self, timeout: float | None = None
    ) -> AbstractContextManager[psycopg.Connection[Any]]:
        self.taken += 1
        return self._pool.connection(timeout=timeout)


class Told:
    """The cache, and an event per notification heard (the tests wait for it, not for time)."""

    def __init__(self, cache: NotifiedCache) -> None:
        self.cache = cache
        self.heard = asyncio.Event()

    def on_note(self, payload: str) -> None:
        self.cache.on_note(payload)
        self.heard.set()

    def on_state(self, listening: bool) -> None:
        self.cache.on_state(listening)


def _key() -> PublicKey:
    return PublicKey(KeyKind.OPENPGP, ALICE, b"\x01\x02", "0102", None, "ed25519")


async def _heard(told: Told) -> None:
    await asyncio.wait_for(told.heard.wait(), 30)
    told.heard.clear()


def test_answers_are_kept_until_another_node_changes_them(
    pg_settings: PgSettings, pg_pool: ConnectionPool[Any]
) -> None:
    async def main() -> None:
        cache = NotifiedCache()
        told = Told(cache)
        listener = Listener(
            lambda: connect_listener(pg_settings), "b", lambda: None, lambda n: None,
            rng=random.Random(1),
        )  # fmt: skip
        listener.subscribe(CHANNEL, told)
        counted = Counted(pg_pool)
        users = PgUserStore(counted, scram_iterations=4096, cache=cache)  # node B
        keys = PgKeyStore(pg_pool, cache)
        other_users = PgUserStore(pg_pool, scram_iterations=4096)  # node A: no cache
        other_keys = PgKeyStore(pg_pool)
        assert users.exists(ALICE) is False and counted.taken == 1  # not listening: asked
        task = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.listening.wait(), 30)
        assert [users.exists(ALICE) for _ in range(3)] == [False] * 3
        assert counted.taken == 4 and cache.hits == 0  # "no account" is never kept
        other_users.add(ALICE, "a password")
        await _heard(told)
        assert users.exists(ALICE) and users.exists(ALICE) and users.exists(ALICE)
        assert counted.taken == 5 and cache.hits == 2  # a True answer is kept

        # Keys: "no key" is asked every time; a key once there is kept until a change.
        assert keys.get(ALICE) is None and keys.get(ALICE) is None and cache.hits == 2
        other_keys.put(_key(), NOW)
        await _heard(told)
        assert keys.get(ALICE) == _key() and keys.get(ALICE) == _key() and cache.hits == 3
        assert other_keys.remove(ALICE)
        await _heard(told)
        assert keys.get(ALICE) is None

        assert other_users.remove(ALICE)
        await _heard(told)
        assert not users.exists(ALICE)  # forgotten at the notification
        other_users.add(ALICE, "a password")
        await _heard(told)
        assert users.exists(ALICE) and users.exists(ALICE) and cache.hits == 4

        # The listening connection cut: nothing is served from memory, so a removal made
        # meanwhile (its notification lost) is seen at once.
        with psycopg.connect(pg_settings.dsn, password=PASSWORD, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
                (f"LISTEN {CHANNEL}%",),
            )
        await asyncio.wait_for(listener.lost.wait(), 30)
        assert other_users.remove(ALICE)
        taken = counted.taken
        assert not users.exists(ALICE) and counted.taken == taken + 1
        other_users.add(ALICE, "a password")
        assert users.exists(ALICE) and users.exists(ALICE) and counted.taken == taken + 3
        assert cache.hits == 4
        # Listening again: kept again, from a clean slate.
        await asyncio.wait_for(listener.listening.wait(), 30)
        assert users.exists(ALICE) and users.exists(ALICE) and cache.hits == 5
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_every_change_to_the_tables_notifies(pg_settings: PgSettings) -> None:
    """The triggers (migration 5): whoever writes, by whatever statement, the commit notifies;
    a rolled-back change does not."""
    with (
        psycopg.connect(pg_settings.dsn, password=PASSWORD, autocommit=True) as listen,
        psycopg.connect(pg_settings.dsn, password=PASSWORD, autocommit=True) as write,
    ):
        listen.execute(f"LISTEN {CHANNEL}")
        with write.transaction():
            write.execute("INSERT INTO key_policies (address, policy) VALUES ('a@b', 'defer')")
        with pytest.raises(psycopg.errors.UniqueViolation), write.transaction():
            write.execute("INSERT INTO key_policies (address, policy) VALUES ('a@b', 'defer')")
        write.execute("DELETE FROM users")
        write.execute("TRUNCATE keys")
        heard = [n.payload for n in listen.notifies(timeout=30, stop_after=3)]
        assert heard == ["key_policies", "users", "keys"]


def _send(server: HatoServer, marker: str) -> None:
    message = (
        f"From: <alice@example.net>\r\nTo: <bob@example.org>\r\nSubject: secret {marker}\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nThe plan is {marker}.\r\n"
    ).encode()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.net", ["bob@example.org"], message)


def _delivered(nodes: list[HatoServer], count: int) -> bytes:
    """The `count`th message in bob's Maildirs (whichever node delivered it), by time."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        boxes = [node.mailbox("bob", "example.org") / "new" for node in nodes]
        files = [p for box in boxes if box.exists() for p in box.glob("*")]
        if len(files) >= count:
            return sorted(files, key=lambda p: p.stat().st_mtime_ns)[count - 1].read_bytes()
        time.sleep(0.1)  # polling the Maildir for the delivery, not synchronisation
    raise AssertionError(f"{count} message(s) not delivered")


def test_a_key_uploaded_on_node_a_encrypts_the_next_message_on_node_b(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, gpg: Gpg
) -> None:
    """bob has no key: node B stores his mail in the clear (and keeps knowing he is an
    account). A key imported on node A: the next message through B is encrypted to it."""
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    store = (pg_dsn, postgres.password_file)
    nodes = [
        HatoServer(
            workdir / name,
            MailSetup(domains=(DomainSetup("example.org", users=users),), store=store),
            host=host,
        )
        for name, users, host in (("a", ("bob",), "127.0.0.2"), ("b", (), "127.0.0.4"))
    ]
    for node in nodes:
        node.start()
    try:
        a, b = nodes
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        _send(b, first)
        assert f"The plan is {first}.".encode() in _delivered(nodes, 1)
        a.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
        _send(b, second)
        raw = _delivered(nodes, 2)
        assert b"multipart/encrypted" in raw and f"The plan is {second}".encode() not in raw
        plain = gpg.run("--decrypt", input=raw.split(b"\r\n\r\n", 1)[1])
        assert f"The plan is {second}.".encode() in plain
    finally:
        for node in nodes:
            node.stop()
