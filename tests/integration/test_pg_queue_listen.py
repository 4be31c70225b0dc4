"""LISTEN/NOTIFY between nodes of the PostgreSQL queue (queue/postgres_listen.py), on the private
PostgreSQL: two PgQueue nodes with their runners in one process, each runner's due scan set to
poll only every 600 s, so that anything delivered within the test's 30 s bound was woken by a
notification, not by a poll."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers.postgres import PASSWORD, PostgresServer
from psycopg_pool import AsyncConnectionPool

from hato.model import Address, Delivered, Outcome, QueuedMessage, QueuedRecipient
from hato.model.queuestore import AdminAction, Selector
from hato.pgstore import migrate
from hato.queue import HOLD_PARAM
from hato.queue.postgres import PgQueue
from hato.queue.runner import QueueRunner
from kit.clock import FakeClock

POLL = 600.0  # the runners' due-scan interval: far beyond the test's bound
BOUND = 30.0  # what "at once" may take on a loaded machine


class Courier:
    """Records what it delivers; with `stall`, holds every attempt until `go` is set."""

    def __init__(self, *, stall: bool = False) -> None:
        self.stall = stall
        self.go = asyncio.Event()
        self.started = asyncio.Event()
        self.delivered: list[str] = []
        self.changed = asyncio.Event()

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        self.started.set()
        if self.stall:
            await self.go.wait()
        self.delivered.append(message.queue_id)
        self.changed.set()
        return [Delivered("ok")] * len(recipients)

    async def wait_for(self, queue_id: str) -> None:
        async with asyncio.timeout(BOUND):
            while queue_id not in self.delivered:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    return pg_dsn


async def open_queue(
    dsn: str, root: Path, name: str, clock: FakeClock, slot: int, rng: random.Random | None = None
) -> PgQueue:
    """A node's queue, with its own pool and LISTEN connection."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn,
        kwargs={"password": PASSWORD, "autocommit": True},
        min_size=1,
        max_size=4,
        check=AsyncConnectionPool.check_connection,  # as hato.pgstore's: reconnects
        open=False,
    )
    await pool.open(wait=True)

    async def listen() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn, password=PASSWORD, autocommit=True)

    return await PgQueue.open(
        pool,
        scratch=root / name,
        clock=clock,
        node_id=name,
        rng=rng,
        id_slot=slot,
        close_pool=True,
        listen=listen,
    )


@asynccontextmanager
async def node(
    dsn: str, root: Path, name: str, clock: FakeClock, courier: Courier, slot: int
) -> AsyncIterator[PgQueue]:
    """A node: its queue (listening on a connection of its own) and its runner, running."""
    queue = await open_queue(dsn, root, name, clock, slot)
    runner = QueueRunner(
        queue, courier, clock=clock, max_in_flight=1, max_sleep=POLL, hostname="mx.test"
    )
    task = asyncio.create_task(runner.run())
    try:
        await _listening(queue)
        yield queue
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.close()


async def _listening(queue: PgQueue) -> None:
    assert queue.listener is not None
    async with asyncio.timeout(BOUND):
        await queue.listener.listening.wait()


async def commit(queue: PgQueue, tag: str, *, held: bool = False) -> str:
    body = queue.new_body()
    body.write(f"Subject: {tag}\r\n\r\nhello\r\n".encode())
    bob = Address.parse("bob@example.org")
    return await queue.commit(
        body,
        mail_from=Address.parse("alice@example.com"),
        recipients=[(bob, bob)],
        prefix=b"",
        params={HOLD_PARAM: None} if held else {},
    )


def test_mail_of_a_busy_node_is_delivered_at_once_by_an_idle_one(dsn: str, tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        busy, idle = Courier(stall=True), Courier()
        async with (
            node(dsn, tmp_path, "node-a", clock, busy, 1) as a,
            node(dsn, tmp_path, "node-b", clock, idle, 2),
        ):
            first = await commit(a, "first")
            async with asyncio.timeout(BOUND):
                await busy.started.wait()  # node A's one delivery slot is taken
            second = await commit(a, "second")
            # Node A is busy: the mail is left to any node and node B is notified.
            await idle.wait_for(second)
            assert first not in idle.delivered
            busy.go.set()
            await busy.wait_for(first)
            assert busy.delivered == [first]

    asyncio.run(main())


def test_a_release_on_one_node_wakes_the_others(dsn: str, tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        couriers = Courier(stall=True), Courier()
        async with (
            node(dsn, tmp_path, "node-a", clock, couriers[0], 1) as a,
            node(dsn, tmp_path, "node-b", clock, couriers[1], 2),
        ):
            held = await commit(a, "quarantined", held=True)
            await commit(a, "blocker")  # node A's runner stays busy with this one
            async with asyncio.timeout(BOUND):
                await couriers[0].started.wait()
            result = await a.admin_apply(
                AdminAction.RELEASE, Selector(queue_id=held), now=clock.now(), log=print
            )
            assert result.rows == 1
            await couriers[1].wait_for(held)
            couriers[0].go.set()

    asyncio.run(main())


def test_the_listener_comes_back_after_the_database_restarts(
    dsn: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    async def main() -> None:
        clock = FakeClock()
        busy, idle = Courier(stall=True), Courier()
        async with (
            node(dsn, tmp_path, "node-a", clock, busy, 1) as a,
            node(dsn, tmp_path, "node-b", clock, idle, 2) as b,
        ):
            await commit(a, "blocker")
            async with asyncio.timeout(BOUND):
                await busy.started.wait()
            assert b.listener is not None
            await asyncio.to_thread(postgres.stop)
            try:
                async with asyncio.timeout(BOUND):
                    await b.listener.lost.wait()
            finally:
                await asyncio.to_thread(postgres.start)
            await _listening(b)  # reconnected with backoff, no restart
            second = await commit(a, "after the restart")
            await idle.wait_for(second)
            busy.go.set()

    asyncio.run(main())


def test_nodes_never_make_the_same_queue_id(dsn: str, tmp_path: Path) -> None:
    """Two nodes with the same clock, the same random source and the same configured slot
    would make the same ids: each claims a slot of its own in the database at open."""

    async def main() -> None:
        clock = FakeClock()
        a = await open_queue(dsn, tmp_path, "node-a", clock, 0, random.Random(7))
        b = await open_queue(dsn, tmp_path, "node-b", clock, 0, random.Random(7))
        try:
            assert (await commit(a, "one")) != (await commit(b, "two"))
            ids = [a.new_body().queue_id for _ in range(100)]
            ids += [b.new_body().queue_id for _ in range(100)]
            assert len(set(ids)) == 200
        finally:
            await a.close()
            await b.close()
        # A node that closed gave its slot back: the next one takes it.
        c = await open_queue(dsn, tmp_path, "node-c", clock, 0, random.Random(7))
        try:
            assert c._ids.slot == 0
        finally:
            await c.close()

    asyncio.run(main())
