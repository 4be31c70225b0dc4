"""The contract every `QueueStore` backend passes (src/hato/queue/protocol.py).

What it checks, each on every backend: a commit is durable and comes back after the store is
closed and opened again; what `commit` hands over in memory is leased to this node; due rows
are leased to one node at a time, and a lease that ran out (or was freed) lets another node
take them, marked recovered; `record` keeps deferred rows for their next attempt and removes
a message once no row is left to try; one delay warning per message; the operator's list,
show, hold, release, flush, delete, the two halves of a bounce, and the figures of `stats`;
errors are the model's (QueueWriteError), never the database's.

Adding a backend: write a class with the three members of `Backend` below (`clock` is the
`FakeClock` the store must take every time it stores from; `start` opens the storage as the
first node, running its recovery; `join` opens the same storage as another node while the
first runs), and add a function making it to `BACKENDS` under its name (it may ask the
request for a fixture, as PostgreSQL's asks for `pg_dsn`). A backend whose server is missing
skips with the reason outside CI (see tests/integration/peers: `require_peer`). Nothing
else here may need changing; a test that only holds for one backend belongs in
tests/unit/queue, not here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import pytest
from peers.postgres import PASSWORD as PG_PASSWORD

from hato.model import Address, QueuedMessage
from hato.model.queuestore import (
    ADMIN_BOUNCE,
    AdminAction,
    Pending,
    QueueWriteError,
    RowUpdate,
    Selector,
    Status,
)
from hato.queue import HOLD_PARAM, Queue, QueueStore
from kit.clock import T0, FakeClock

LEASE = 900.0
SMALL = b"Subject: small\r\n\r\nhello\r\n"
BIG = b"Subject: big\r\n\r\n" + b"x" * 70_000 + b"\r\n"  # past 64 KiB: a spool file first
PREFIX = b"Received: by contract\r\n"


class Backend(Protocol):
    clock: FakeClock

    async def start(self, node_id: str = "node-a", *, lease_seconds: float = LEASE) -> QueueStore:
        """Open the storage as the first node (recovery runs: leases of the past are freed),
        seeing plenty of free space (give it a free-space figure: no test depends on the
        machine's disk)."""
        ...

    async def join(self, node_id: str, *, lease_seconds: float = LEASE) -> QueueStore:
        """Open the same storage as another node, while the first one runs."""
        ...


class SqliteBackend:
    """The embedded default: queue/store.py on a directory of the test's own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self._slots = 0

    async def _open(self, node_id: str, lease_seconds: float, *, recover: bool) -> QueueStore:
        self._slots += 1
        return await Queue.open(
            self.root,
            clock=self.clock,
            node_id=node_id,
            lease_seconds=lease_seconds,
            free_space=lambda _path: 1 << 40,
            recover=recover,
            id_slot=self._slots % 16,
        )

    async def start(self, node_id: str = "node-a", *, lease_seconds: float = LEASE) -> QueueStore:
        return await self._open(node_id, lease_seconds, recover=True)

    async def join(self, node_id: str, *, lease_seconds: float = LEASE) -> QueueStore:
        return await self._open(node_id, lease_seconds, recover=False)


class PostgresBackend:
    """queue/postgres.py on a fresh database of the private PostgreSQL (tests/conftest.py
    `pg_dsn`); each node its own pool and scratch directory."""

    def __init__(self, root: Path, dsn: str) -> None:
        self.root = root
        self.dsn = dsn
        self.clock = FakeClock()
        self._slots = 0

    async def _open(self, node_id: str, lease_seconds: float, *, recover: bool) -> QueueStore:
        from psycopg_pool import AsyncConnectionPool

        from hato.queue.postgres import PgQueue

        self._slots += 1
        pool = AsyncConnectionPool(
            self.dsn,
            kwargs={"password": PG_PASSWORD, "autocommit": True},
            min_size=1,
            max_size=4,
            open=False,
        )
        await pool.open(wait=True)
        return await PgQueue.open(
            pool,
            scratch=self.root / node_id,
            clock=self.clock,
            node_id=node_id,
            lease_seconds=lease_seconds,
            recover=recover,
            id_slot=self._slots % 16,
            close_pool=True,
        )

    async def start(self, node_id: str = "node-a", *, lease_seconds: float = LEASE) -> QueueStore:
        return await self._open(node_id, lease_seconds, recover=True)

    async def join(self, node_id: str, *, lease_seconds: float = LEASE) -> QueueStore:
        return await self._open(node_id, lease_seconds, recover=False)


def _postgres(request: pytest.FixtureRequest, root: Path) -> Backend:
    import psycopg

    from hato.pgstore import migrate

    dsn = request.getfixturevalue("pg_dsn")  # skips (or fails in CI) without PostgreSQL
    with psycopg.connect(dsn, password=PG_PASSWORD, autocommit=True) as conn:
        migrate(conn)
    return PostgresBackend(root, dsn)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": lambda _request, root: SqliteBackend(root),
    "postgresql": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield BACKENDS[request.param](request, tmp_path)


def contract(
    test: Callable[[Backend], Awaitable[None]],
) -> Callable[[Backend], None]:
    """An async test of one backend, run on a loop of its own."""

    @functools.wraps(test)
    def wrapper(backend: Backend) -> None:
        asyncio.run(asyncio.wait_for(test(backend), 60))

    return wrapper


@asynccontextmanager
async def opened(backend: Backend, node_id: str = "node-a") -> AsyncIterator[QueueStore]:
    store = await backend.start(node_id)
    try:
        yield store
    finally:
        await store.close()


def addr(text: str) -> Address:
    return Address.parse(text)


async def commit(
    store: QueueStore,
    body: bytes = SMALL,
    *,
    to: Sequence[str] = ("bob@example.org",),
    sender: str | None = "alice@example.com",
) -> str:
    writer = store.new_body()
    writer.write(body)
    return await store.commit(
        writer,
        mail_from=addr(sender) if sender is not None else None,
        recipients=[(addr(t), addr(t)) for t in to],
        prefix=PREFIX,
        params={"BODY": "8BITMIME"},
    )


async def fresh(store: QueueStore) -> list[Pending]:
    return await asyncio.wait_for(store.wait_fresh(), 30)


async def content(store: QueueStore, message: QueuedMessage) -> bytes:
    loaded = await store.load_body(message)
    if loaded.body is not None:
        return loaded.body
    return await asyncio.to_thread(Path(loaded.body_path).read_bytes)


async def defer(
    store: QueueStore, pending: Pending, *, at: float, reply: str = "451 4.4.1 x"
) -> None:
    updates = [
        RowUpdate(r.row_id, Status.QUEUED, r.attempts + 1, at, reply) for r in pending.recipients
    ]
    assert not await store.record(
        pending.message.queue_id, updates, has_file=bool(pending.message.body_path)
    )
    store.release(pending.message.queue_id)


def finished(pending: Pending, status: Status, now: float) -> list[RowUpdate]:
    return [RowUpdate(r.row_id, status, r.attempts + 1, now, "250 ok") for r in pending.recipients]


# ---- commit ----


@contract
async def test_a_commit_is_handed_over_leased_with_everything_it_was_given(
    backend: Backend,
) -> None:
    async with opened(backend) as store:
        small = await commit(store, to=("bob@example.org", "carol@example.net"))
        big = await commit(store, BIG, sender=None)
        got = {p.message.queue_id: p for p in await fresh(store)}
        assert set(got) == {small, big}
        first = got[small]
        assert first.message.mail_from == addr("alice@example.com")
        assert first.message.prefix == PREFIX and first.message.params == {"BODY": "8BITMIME"}
        assert first.message.received_at == backend.clock.now()
        assert first.message.size == len(SMALL)
        assert [str(r.address) for r in first.recipients] == [
            "bob@example.org",
            "carol@example.net",
        ]
        assert all(r.attempts == 0 and not r.recovered for r in first.recipients)
        assert first.lease_until == backend.clock.now() + store.lease_seconds
        assert got[big].message.mail_from is None
        assert await content(store, first.message) == SMALL
        assert await content(store, got[big].message) == BIG
        # Leased to this node by the commit itself: no due scan takes them again.
        assert await store.take_due(limit=10, exclude=()) == []


@contract
async def test_a_commit_survives_the_store_closing_and_is_due_after_recovery(
    backend: Backend,
) -> None:
    async with opened(backend) as store:
        small = await commit(store)
        big = await commit(store, BIG)
    async with opened(backend) as store:  # a stop mid-attempt: nothing was recorded
        taken = {p.message.queue_id: p for p in await store.take_due(limit=10, exclude=())}
        assert set(taken) == {small, big}
        # Perhaps delivered before the stop: the courier is to check (exactly once).
        assert all(r.recovered for p in taken.values() for r in p.recipients)
        assert await content(store, taken[small].message) == SMALL
        assert await content(store, taken[big].message) == BIG


@contract
async def test_a_message_without_recipients_or_with_a_broken_body_leaves_nothing(
    backend: Backend,
) -> None:
    async with opened(backend) as store:
        writer = store.new_body()
        writer.write(SMALL)
        with pytest.raises(ValueError):
            await store.commit(writer, mail_from=None, recipients=[], prefix=b"", params={})
        writer = store.new_body()
        writer.write(SMALL)
        writer._error = OSError(28, "No space left on device")  # what a failed spool write keeps
        pair = (addr("a@b.example"), addr("a@b.example"))
        with pytest.raises(QueueWriteError) as refused:
            await store.commit(writer, mail_from=None, recipients=[pair], prefix=b"", params={})
        assert refused.value.insufficient_storage and refused.value.reply.code == 452
        stats = await store.stats(now=backend.clock.now())
        assert stats.messages == 0 and stats.queued == 0


@contract
async def test_new_bodies_get_distinct_queue_ids_and_room_is_reported(backend: Backend) -> None:
    async with opened(backend) as store:
        bodies = [store.new_body() for _ in range(50)]
        assert len({b.queue_id for b in bodies}) == 50
        for body in bodies:
            body.discard()
        assert store.has_room(10 * 1024 * 1024)
        committed = await commit(store)
        assert committed not in {b.queue_id for b in bodies}


# ---- leases ----


@contract
async def test_due_rows_are_leased_to_one_node_until_the_lease_runs_out(backend: Backend) -> None:
    async with opened(backend) as a:
        qid = await commit(a, to=("bob@example.org", "carol@example.org"))
        await fresh(a)
        b = await backend.join("node-b")
        try:
            assert await b.take_due(limit=10, exclude=()) == []
            backend.clock.advance(LEASE - 1)
            assert await b.take_due(limit=10, exclude=()) == []
            backend.clock.advance(2)  # node-a died mid-attempt: its lease ran out
            (taken,) = await b.take_due(limit=10, exclude=())
            assert taken.message.queue_id == qid and len(taken.recipients) == 2
            assert taken.lease_until == backend.clock.now() + b.lease_seconds
            assert await a.take_due(limit=10, exclude=()) == []  # node-b holds them now
            # The excluded rows (in flight here) are never taken twice.
            backend.clock.advance(LEASE + 1)
            assert await a.take_due(limit=10, exclude={r.row_id for r in taken.recipients}) == []
        finally:
            await b.close()


@contract
async def test_freed_leases_make_rows_due_at_once_marked_recovered(backend: Backend) -> None:
    async with opened(backend) as store:
        await commit(store)
        await fresh(store)
        assert await store.next_due() == backend.clock.now() + LEASE
        assert await store.free_leases("node-a", recovered=True) == 1
        assert await store.free_leases("node-a", recovered=True) == 0
        assert await store.next_due() == backend.clock.now()
        (taken,) = await store.take_due(limit=10, exclude=())
        assert [r.recovered for r in taken.recipients] == [True]


@contract
async def test_take_due_honours_its_limit(backend: Backend) -> None:
    async with opened(backend) as store:
        for _ in range(3):
            await commit(store)
        await fresh(store)
        await store.free_leases("node-a", recovered=False)
        first = await store.take_due(limit=2, exclude=())
        rest = await store.take_due(limit=2, exclude=())
        assert (len(first), len(rest)) == (2, 1)
        assert not any(r.recovered for p in first + rest for r in p.recipients)


# ---- outcomes ----


@contract
async def test_a_deferred_row_waits_for_its_next_attempt(backend: Backend) -> None:
    async with opened(backend) as store:
        await commit(store)
        (pending,) = await fresh(store)
        at = backend.clock.now() + 600
        await defer(store, pending, at=at, reply="451 4.4.1 no answer")
        assert await store.next_due() == at
        assert await store.take_due(limit=10, exclude=()) == []
        backend.clock.advance(600)
        (again,) = await store.take_due(limit=10, exclude=())
        assert [r.attempts for r in again.recipients] == [1]
        (row,) = await store.admin_list(Selector(), now=backend.clock.now())
        assert row.last_reply == "451 4.4.1 no answer" and row.busy


@contract
async def test_a_message_is_removed_once_no_row_is_left_to_try(backend: Backend) -> None:
    async with opened(backend) as store:
        for body in (SMALL, BIG):
            qid = await commit(store, body, to=("bob@example.org", "carol@example.org"))
            (pending,) = await fresh(store)
            bob, carol = pending.recipients
            now = backend.clock.now()
            has_file = bool(pending.message.body_path)
            delivered = RowUpdate(bob.row_id, Status.DELIVERED, 1, now, "250 ok")
            assert not await store.record(qid, [delivered], has_file=has_file)
            failed = RowUpdate(carol.row_id, Status.FAILED, 1, now, "550 5.1.1 no such user")
            assert await store.record(qid, [failed], has_file=has_file)
            store.release(qid)
            assert await store.admin_show(qid, now=now) is None
        stats = await store.stats(now=backend.clock.now())
        assert (stats.messages, stats.queued, stats.bytes) == (0, 0, 0)


@contract
async def test_one_delay_warning_per_message(backend: Backend) -> None:
    async with opened(backend) as store:
        qid = await commit(store)
        assert await store.claim_delay_warning(qid)
        assert not await store.claim_delay_warning(qid)
        assert not await store.claim_delay_warning("no-such-id")


# ---- the operator ----


@contract
async def test_list_and_show_select_by_id_domain_and_sender(backend: Backend) -> None:
    async with opened(backend) as store:
        one = await commit(store, to=("Bob@Example.ORG", "carol@example.net"))
        bob = str(addr("Bob@Example.ORG"))  # as the store keeps it: the domain in lower case
        two = await commit(store, sender=None, to=("dave@example.org",))
        now = backend.clock.now()
        rows = await store.admin_list(Selector(), now=now)
        assert [(r.queue_id, r.recipient) for r in rows] == [
            (one, bob),
            (one, "carol@example.net"),
            (two, "dave@example.org"),
        ]
        assert all(r.busy and r.status == "queued" and r.why for r in rows)
        by_domain = await store.admin_list(Selector(domain="EXAMPLE.org."), now=now)
        assert [r.recipient for r in by_domain] == [bob, "dave@example.org"]
        null = await store.admin_list(Selector(sender="<>"), now=now)
        assert [r.queue_id for r in null] == [two]
        alice = await store.admin_list(Selector(sender="ALICE@example.com"), now=now)
        assert {r.queue_id for r in alice} == {one}
        assert [r.queue_id for r in await store.admin_list(Selector(queue_id=two), now=now)] == [
            two
        ]
        assert await store.admin_list(Selector(domain="example.%"), now=now) == []
        detail = await store.admin_show(one, now=now)
        assert detail is not None
        assert detail.sender == "<alice@example.com>" and detail.size == len(SMALL)
        assert detail.headers.startswith("Received: by contract\r\nSubject: small\r\n")
        assert [r.recipient for r in detail.recipients] == [bob, "carol@example.net"]
        assert await store.admin_show("no-such-id", now=now) is None


@contract
async def test_hold_release_flush_and_delete(backend: Backend) -> None:
    async with opened(backend) as store:
        qid = await commit(store, to=("bob@example.org", "carol@example.org"))
        (pending,) = await fresh(store)
        log: list[str] = []
        now = backend.clock.now()
        busy = await store.admin_apply(AdminAction.HOLD, Selector(), now=now, log=log.append)
        assert (busy.rows, busy.busy) == (0, 2)  # being delivered: left alone
        await defer(store, pending, at=now + 3600)
        held = await store.admin_apply(AdminAction.HOLD, Selector(), now=now, log=log.append)
        assert (held.rows, held.messages, held.busy) == (2, (qid,), 0)
        assert len(log) == 2 and "admin-hold" in log[0]
        assert {r.status for r in await store.admin_list(Selector(), now=now)} == {"held"}
        backend.clock.advance(3600)
        assert await store.take_due(limit=10, exclude=()) == []  # held rows are not tried
        now = backend.clock.now()
        released = await store.admin_apply(AdminAction.RELEASE, Selector(), now=now, log=log.append)
        assert released.rows == 2
        (due,) = await store.take_due(limit=10, exclude=())  # released: due now
        await defer(store, due, at=now + 3600)
        # A flush makes deferred rows due now, whatever the schedule said.
        flushed = await store.admin_apply(AdminAction.FLUSH, Selector(), now=now, log=log.append)
        assert flushed.rows == 2 and await store.next_due() == now
        one = Selector(domain="example.org", queue_id=qid)
        deleted = await store.admin_apply(AdminAction.DELETE, one, now=now, log=log.append)
        assert (deleted.rows, deleted.removed) == (2, (qid,))
        assert await store.admin_show(qid, now=now) is None
        stats = await store.stats(now=now)
        assert stats.messages == 0


@contract
async def test_a_commit_with_the_hold_param_is_held_until_released(backend: Backend) -> None:
    # HOLD_PARAM (a milter's SMFIR_QUARANTINE): durable, but not handed over nor due.
    async with opened(backend) as store:
        writer = store.new_body()
        writer.write(SMALL)
        qid = await store.commit(
            writer,
            mail_from=addr("alice@example.com"),
            recipients=[(addr("bob@example.org"), addr("bob@example.org"))],
            prefix=PREFIX,
            params={HOLD_PARAM: "milter"},
        )
        other = await commit(store)
        assert [p.message.queue_id for p in await fresh(store)] == [other]
        now = backend.clock.now()
        assert {r.status for r in await store.admin_list(Selector(queue_id=qid), now=now)} == {
            "held"
        }
        backend.clock.advance(3600)  # `other`'s lease runs out: due again; the held one not
        due = await store.take_due(limit=10, exclude=())
        assert [p.message.queue_id for p in due] == [other]
        now = backend.clock.now()
        released = await store.admin_apply(
            AdminAction.RELEASE, Selector(queue_id=qid), now=now, log=lambda _: None
        )
        assert released.rows == 1
        (held,) = await store.take_due(limit=10, exclude=())
        assert held.message.queue_id == qid and await content(store, held.message) == SMALL


@contract
async def test_bounce_claims_then_fails_only_rows_still_claimed(backend: Backend) -> None:
    async with opened(backend) as store:
        qid = await commit(store, to=("bob@example.org", "carol@example.org"))
        other = await commit(store, BIG, to=("dave@example.org",))
        for pending in await fresh(store):
            await defer(store, pending, at=backend.clock.now() + 3600)
        now = backend.clock.now()
        claimed, busy = await store.claim_for_bounce(
            Selector(), now=now, owner="node-a/admin", until=now + 7200
        )
        assert busy == 0
        by_id = {item.message.queue_id: item for item in claimed}
        assert set(by_id) == {qid, other}
        assert by_id[qid].message.body == SMALL  # read in the same snapshot as the claim
        assert [str(r.address) for r in by_id[qid].recipients] == [
            "bob@example.org",
            "carol@example.org",
        ]
        # Claimed rows are nobody else's: not due, and busy to another bounce.
        backend.clock.advance(3600)
        assert await store.take_due(limit=10, exclude=()) == []
        _, busy_again = await store.claim_for_bounce(
            Selector(), now=backend.clock.now(), owner="node-b/admin", until=now + 7200
        )
        assert busy_again == 3
        log: list[str] = []
        done = await store.finish_bounce(
            [by_id[qid]],
            [by_id[other]],
            now=backend.clock.now(),
            owner="node-a/admin",
            log=log.append,
        )
        assert (done.failed, done.touched, done.removed) == (2, (qid,), (qid,))
        assert len(log) == 2 and "admin-bounce" in log[0]
        (left,) = await store.admin_list(Selector(), now=backend.clock.now())
        assert left.queue_id == other and not left.busy  # given back
        # Rows no longer claimed by that owner are not failed (another took them meanwhile).
        done = await store.finish_bounce(
            [by_id[other]], [], now=backend.clock.now(), owner="node-a/admin", log=log.append
        )
        assert done.failed == 0 and done.removed == ()
        assert str(ADMIN_BOUNCE).startswith("550 5.0.0")


@contract
async def test_stats_count_queued_deferred_held_and_busy(backend: Backend) -> None:
    async with opened(backend) as store:
        await commit(store, to=("a@example.org", "b@example.org"))
        await commit(store, BIG, to=("c@example.org",))
        backend.clock.advance(10)
        await commit(store, to=("d@example.org",))
        pendings = await fresh(store)
        first, second = pendings[0], pendings[1]
        now = backend.clock.now()
        await defer(store, first, at=now + 600)
        await defer(store, second, at=now + 600)
        held = Selector(queue_id=second.message.queue_id)
        lines: list[str] = []
        await store.admin_apply(AdminAction.HOLD, held, now=now, log=lines.append)
        stats = await store.stats(now=now)
        assert stats.messages == 3
        assert (stats.queued, stats.deferred, stats.held, stats.busy) == (3, 2, 1, 1)
        assert stats.oldest == T0
        assert stats.bytes == 2 * len(SMALL) + len(BIG)


def test_postgresql_rows_whose_body_could_not_be_read_are_due_at_the_next_scan(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The database down while an attempt reads its body: nothing was tried, so the rows are
    given back at the next scan once it answers (the three-node outage test lost a message
    for the 900 s lease before); rows in flight here keep their lease."""
    from psycopg_pool import AsyncConnectionPool

    backend = _postgres(request, tmp_path)

    async def run() -> None:
        async with opened(backend) as store:
            await commit(store)
            await commit(store, to=("carol@example.org",))
            first, second = await fresh(store)
            pool = store._pool  # type: ignore[attr-defined]
            store._pool = AsyncConnectionPool("host=127.0.0.1", open=False)  # type: ignore[attr-defined]
            unread = dataclasses.replace(first.message, body=None, body_path="")
            with pytest.raises(QueueWriteError):
                await store.load_body(unread)
            also = dataclasses.replace(second.message, body=None, body_path="")
            with pytest.raises(QueueWriteError):
                await store.load_body(also)
            store._pool = pool  # type: ignore[attr-defined]
            in_flight = {r.row_id for r in second.recipients}
            (taken,) = await store.take_due(limit=10, exclude=in_flight)
            assert taken.message.queue_id == first.message.queue_id
            assert [r.recovered for r in taken.recipients] == [False]
            assert await content(store, taken.message) == SMALL
            # The other attempt ended too: its rows come back at the scan after.
            (again,) = await store.take_due(limit=10, exclude={r.row_id for r in taken.recipients})
            assert again.message.queue_id == second.message.queue_id

    asyncio.run(asyncio.wait_for(run(), 60))
