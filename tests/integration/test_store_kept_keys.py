"""The SMTP RCPT's "no key" kept on the shared PostgreSQL store (issue 16: KeptKeys,
crypto/keystore_pg.py), on a real PostgreSQL: kept only while LISTEN hato_directory is in
effect and until a notification; and, since a notification comes a moment after the commit
that sends it, the mailboxes told "no key" are checked again in the queue's commit
transaction (queue/postgres.py `unkeyed`): a key imported on another node before that commit
is honoured even while its notification has not arrived, the message is encrypted to it and
nothing is stored in the clear (intake/message.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers.postgres import PASSWORD
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from hato.crypto.keystore_pg import KeptKeys, PgKeyStore
from hato.delivery import MaildirCourier
from hato.directory.resolver import Local, Resolution
from hato.intake.context import IntakeContext
from hato.intake.direct import DirectDelivery
from hato.intake.message import commit
from hato.intake.recipients import recipient
from hato.intake.transaction import NO_DSN, Transaction
from hato.model import Address, Role
from hato.model.notified import CHANNEL, NotifiedCache
from hato.model.queuestore import KeyAppeared
from hato.pgstore import PgSettings, connect_listener
from hato.queue.postgres import PgQueue
from hato.queue.postgres_listen import Listener
from hato.smtp import ServerSettings
from kit.clock import FakeClock
from kit.cryptokeys import Gpg

BOB = Address("bob", "example.org")
ALICE = Address("alice", "example.org")
SENDER = Address("carol", "remote.test")
NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


class Counted:
    """The key store's `get`, counting the look-ups that reached the database."""

    def __init__(self, store: PgKeyStore) -> None:
        self.store = store
        self.asked = 0

    def get(self, address: Address) -> Any:
        self.asked += 1
        return self.store.get(address)


class Book:
    """example.org: alice and bob are accounts."""

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return Local((address,), ())

    def owns(self, user: Address, address: Address) -> bool:
        return False

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"


async def _open_queue(dsn: str, root: Path) -> PgQueue:
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn, kwargs={"password": PASSWORD, "autocommit": True}, min_size=1, max_size=4, open=False
    )
    await pool.open(wait=True)
    return await PgQueue.open(
        pool, scratch=root / "scratch", clock=FakeClock(1_800_000_000.0), node_id="b",
        close_pool=True,
    )  # fmt: skip


def test_no_key_is_kept_while_listening_until_another_node_changes_the_keys(
    pg_settings: PgSettings, pg_pool: ConnectionPool[Any], gpg: Gpg
) -> None:
    async def main() -> None:
        cache = NotifiedCache()
        heard = asyncio.Event()

        class Told:
            def on_note(self, payload: str) -> None:
                cache.on_note(payload)
                heard.set()

            def on_state(self, listening: bool) -> None:
                cache.on_state(listening)

        listener = Listener(
            lambda: connect_listener(pg_settings), "b", lambda: None, lambda n: None,
            rng=random.Random(1),
        )  # fmt: skip
        listener.subscribe(CHANNEL, Told())
        counted = Counted(PgKeyStore(pg_pool, cache))
        kept = KeptKeys(counted, cache)  # type: ignore[arg-type]  # counts its store's reads
        other = PgKeyStore(pg_pool)  # node A
        assert kept.get(BOB) is None and kept.get(BOB) is None
        assert counted.asked == 2  # not listening: nothing kept
        task = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.listening.wait(), 30)
        assert kept.get(BOB) is None and kept.get(BOB) is None and kept.get(BOB) is None
        assert counted.asked == 3  # listening: "no key" kept
        other.import_key(gpg.export("bob@example.org"), BOB, NOW)
        await asyncio.wait_for(heard.wait(), 30)
        assert kept.get(BOB) is not None  # forgotten at the notification: asked again
        assert counted.asked == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


@pytest.mark.parametrize("size", [100, 200_000], ids=["inline", "chunked"])
def test_the_commit_refuses_a_copy_in_the_clear_for_a_mailbox_keyed_by_then(
    pg_settings: PgSettings, pg_pool: ConnectionPool[Any], gpg: Gpg, tmp_path: Path, size: int
) -> None:
    """In one group commit: the message whose `unkeyed` mailbox has a key is refused, nothing
    of it stored; the others are committed. The check fails the group's transaction, an
    implicit one in pipeline mode (inline bodies) or an explicit one (a body in chunks), and
    the others are written again without it."""
    PgKeyStore(pg_pool).import_key(gpg.export("bob@example.org"), BOB, NOW)
    dave = Address("dave", "example.org")

    async def main() -> None:
        queue = await _open_queue(pg_settings.dsn, tmp_path)
        try:

            async def one(to: Address) -> str:
                body = queue.new_body()
                body.write(b"Subject: hi\r\n\r\n" + b"The plan.\r\n" * (size // 11))
                return await queue.commit(
                    body, mail_from=SENDER, recipients=[(to, to)], prefix=b"", params={},
                    unkeyed=[f"{to.local}@{to.domain}"],
                )  # fmt: skip

            # The first goes alone (no group running), the other two together.
            results = await asyncio.gather(one(ALICE), one(BOB), one(dave), return_exceptions=True)
        finally:
            await queue.close()
        assert isinstance(results[0], str) and isinstance(results[2], str)
        assert isinstance(results[1], KeyAppeared), results[1]
        assert str(results[1]) == "a key was imported for bob@example.org"
        with psycopg.connect(pg_settings.dsn, password=PASSWORD, autocommit=True) as conn:
            rows = conn.execute("SELECT address FROM queue_recipients ORDER BY row_id").fetchall()
            messages = conn.execute("SELECT count(*) FROM queue_messages").fetchone()
        assert rows == [(str(ALICE),), (str(dave),)]
        assert messages == (2,)

    asyncio.run(main())


@pytest.mark.parametrize("direct", [False, True], ids=["queued", "direct"])
def test_a_key_imported_before_the_commit_is_honoured_before_its_notification(
    pg_settings: PgSettings, pg_pool: ConnectionPool[Any], gpg: Gpg, tmp_path: Path, direct: bool
) -> None:
    """bob's "no key" is kept (the cache is live; no notification will come: one in flight);
    a key imported on another node; the next message's RCPT is answered "no key" from memory,
    yet what is stored (committed to the queue, or `direct`ly into bob's Maildir after a
    fresh look-up) is encrypted to bob's key, with nothing in the clear."""
    cache = NotifiedCache()
    cache.on_state(True)  # LISTEN in effect; the notification of the import not yet heard
    counted = Counted(PgKeyStore(pg_pool, cache))
    kept = KeptKeys(counted, cache)  # type: ignore[arg-type]  # counts its store's reads

    clock = FakeClock(1_800_000_000.0)
    courier = MaildirCourier(tmp_path / "mail", "mx.example.org", clock=clock)
    delivery = DirectDelivery(courier, Book().is_local_domain, clock)

    async def main() -> list[bytes]:
        queue = await _open_queue(pg_settings.dsn, tmp_path)
        ctx = IntakeContext(
            role=Role.MX, settings=ServerSettings(hostname="mx.example.org"), queue=queue,
            resolver=Book(), clock=FakeClock(1_800_000_000.0), postmaster_domain="example.org",
            keys=PgKeyStore(pg_pool), rcpt_keys=kept, direct=delivery if direct else None,
        )  # fmt: skip
        try:
            ids = []
            for marker in (b"first", b"second"):
                tx = Transaction(SENDER)
                assert recipient(ctx, tx, BOB, NO_DSN, session="t") is None
                body = queue.new_body()
                body.write(b"Subject: secret\r\n\r\nThe plan is " + marker + b".\r\n")
                done = await commit(ctx, tx, body, mail_from=SENDER, added=b"", params={},
                                    trace=lambda qid: b"", session="t")  # fmt: skip
                assert isinstance(done, list)
                ids += done
                if marker == b"first":  # on node A, after the first message's commit
                    PgKeyStore(pg_pool).import_key(gpg.export("bob@example.org"), BOB, NOW)
        finally:
            await queue.close()
        if direct:  # into the Maildir, by queue id (the file names carry it)
            files = list((tmp_path / "mail").rglob("new/*"))
            return [next(f.read_bytes() for f in files if qid in f.name) for qid in ids]
        with psycopg.connect(pg_settings.dsn, password=PASSWORD, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT queue_id, body FROM queue_messages WHERE queue_id = ANY(%s)", (ids,)
            ).fetchall()
        bodies = {queue_id: bytes(body) for queue_id, body in rows}
        return [bodies[queue_id] for queue_id in ids]

    try:
        stored = asyncio.run(main())
    finally:
        courier.close()
    assert counted.asked == 1 and cache.hits >= 1  # the second RCPT was answered from memory
    assert len(stored) == 2
    assert b"The plan is first." in stored[0]  # committed before the key: in the clear
    assert b"multipart/encrypted" in stored[1] and b"The plan is second" not in stored[1]
    plain = gpg.run("--decrypt", input=stored[1].split(b"\r\n\r\n", 1)[1])
    assert b"The plan is second." in plain
