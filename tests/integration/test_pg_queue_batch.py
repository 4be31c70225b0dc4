"""The PostgreSQL queue records the outcomes of a runner's batch in one transaction (issue 16:
queue/postgres_record.py), and a node that dies between its deliveries and that transaction's
COMMIT costs at worst a redelivery onto the same Maildir names, never a loss or a second copy.
On the private PostgreSQL; one PgQueue node (then a second) with its runner in this process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers.postgres import PASSWORD
from psycopg_pool import AsyncConnectionPool

from hato.delivery.maildir import MaildirCourier
from hato.model import (
    Address,
    Delivered,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
)
from hato.model.queuestore import RowUpdate, Status
from hato.pgstore import migrate
from hato.queue import postgres, postgres_record
from hato.queue.body import QueueWriteError
from hato.queue.postgres import PgQueue
from hato.queue.runner import QueueRunner
from hato.queue.store import HOLD_PARAM
from kit.clock import FakeClock

BOUND = 30.0  # what "at once" may take on a loaded machine
LEASE = 900.0
N = 6


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    return pg_dsn


async def open_queue(dsn: str, root: Path, name: str, clock: FakeClock) -> PgQueue:
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn, kwargs={"password": PASSWORD, "autocommit": True}, min_size=1, max_size=4, open=False
    )
    await pool.open(wait=True)
    return await PgQueue.open(
        pool, scratch=root / name, clock=clock, node_id=name, lease_seconds=LEASE, close_pool=True
    )


async def commit(queue: PgQueue, n: int, recipients: Sequence[str]) -> str:
    body = queue.new_body()
    body.write(f"Subject: {n}\r\nMessage-ID: <{n}@example.com>\r\n\r\nhello\r\n".encode())
    return await queue.commit(
        body,
        mail_from=Address.parse("alice@example.com"),
        recipients=[(Address.parse(r), Address.parse(r)) for r in recipients],
        prefix=b"",
        params={},
    )


async def commit_body(
    queue: PgQueue, body: bytes, params: dict[str, str | None] | None = None
) -> str:
    """`body` as it is, to bob@example.org."""
    writer = queue.new_body()
    writer.write(body)
    return await queue.commit(
        writer,
        mail_from=Address.parse("alice@example.com"),
        recipients=[(Address.parse("bob@example.org"),) * 2],
        prefix=b"\x00\\",
        params=params or {},
    )


class Recorded:
    """Counts the queue's `record` calls (wraps it): `calls` begun (the attempt's courier has
    returned), `count` finished; `wait(n)` until n finished, `wait(n, begun=True)` begun."""

    def __init__(self, queue: PgQueue, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.count = 0
        self.changed = asyncio.Event()
        real = queue.record

        async def record(
            queue_id: str, updates: Sequence[RowUpdate], *, has_file: bool = True
        ) -> bool:
            self.calls += 1
            self.changed.set()
            try:
                return await real(queue_id, updates, has_file=has_file)
            finally:
                self.count += 1
                self.changed.set()

        monkeypatch.setattr(queue, "record", record)

    async def wait(self, n: int, *, begun: bool = False) -> None:
        async with asyncio.timeout(BOUND):
            while (self.calls if begun else self.count) < n:
                self.changed.clear()
                await self.changed.wait()

    async def run_until(self, runner: QueueRunner, n: int, *, begun: bool = False) -> None:
        """Run `runner` until `wait(n, begun=begun)` is over, then stop it."""
        task = asyncio.create_task(runner.run())
        try:
            await self.wait(n, begun=begun)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Answers:
    """Delivers the even messages (by subject) and defers the odd ones, without waiting."""

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        body = message.body or b""
        odd = int(body.split(b"Subject: ")[1].split(b"\r\n")[0]) % 2
        outcome: Outcome = TempFailed(Reply(451, "4.2.0", "later")) if odd else Delivered("ok")
        return [outcome] * len(recipients)


class Transactions:
    """Counts psycopg's transaction() (its BEGIN, COMMIT and a Sync after each), wrapped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = psycopg.AsyncConnection.transaction

        def counted(conn: psycopg.AsyncConnection[Any], *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(conn, *args, **kwargs)

        monkeypatch.setattr(psycopg.AsyncConnection, "transaction", counted)


def _xmins(dsn: str) -> list[tuple[str, int, str]]:
    """Every recipient row left: its message, attempts, and the transaction that wrote it."""
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT queue_id, attempts, xmin::text FROM queue_recipients ORDER BY row_id"
        ).fetchall()
    return [(str(q), int(a), str(x)) for q, a, x in rows]


def test_a_batch_of_outcomes_is_one_transaction(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        clock = FakeClock()
        queue = await open_queue(dsn, tmp_path, "node-a", clock)
        try:
            ids = [await commit(queue, n, [f"u{n}@example.org"]) for n in range(N)]
            recorded = Recorded(queue, monkeypatch)
            runner = QueueRunner(queue, Answers(), clock=clock, hostname="mx.test")
            await recorded.run_until(runner, N)  # it takes the N committed messages at once
        finally:
            await queue.close()
        rows = _xmins(dsn)
        # The delivered messages are gone; the deferred ones wait, tried once, all their rows
        # written by ONE transaction (one xmin), not one transaction per attempt.
        assert [q for q, _, _ in rows] == ids[1::2]
        assert {a for _, a, _ in rows} == {1}
        assert len({x for _, _, x in rows}) == 1

    asyncio.run(main())


def _files(root: Path) -> dict[str, list[str]]:
    return {
        box.name: sorted(p.name for p in (box / "new").iterdir())
        for box in sorted((root / "example.org").iterdir())
    }


def test_a_node_dying_before_its_outcomes_commit_means_a_redelivery_onto_the_same_names(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail = tmp_path / "mail"

    async def main() -> dict[str, list[str]]:
        clock = FakeClock()
        real_write = postgres_record.write_outcomes

        async def dies(*args: Any, **kwargs: Any) -> set[str]:
            await asyncio.Event().wait()  # the node "dies" before its outcomes' COMMIT
            raise AssertionError("not reached")

        monkeypatch.setattr(postgres_record, "write_outcomes", dies)
        a = await open_queue(dsn, tmp_path, "node-a", clock)
        courier = MaildirCourier(mail, "mx.test", clock=clock)
        try:
            for n in range(N):
                await commit(a, n, ["bob@example.org", "carol@example.org"])
            delivered = Recorded(a, monkeypatch)
            # Every attempt delivered, none recorded.
            await delivered.run_until(QueueRunner(a, courier, clock=clock), N, begun=True)
        finally:
            await a.close()  # frees nothing: the rows stay leased to node-a
            courier.close()
        first = _files(mail)
        assert [len(names) for names in first.values()] == [N, N]
        assert len(_xmins(dsn)) == 2 * N  # nothing recorded

        monkeypatch.setattr(postgres_record, "write_outcomes", real_write)
        clock.advance(LEASE + 1)  # node-a's leases run out: any node takes the rows
        b = await open_queue(dsn, tmp_path, "node-b", clock)
        courier = MaildirCourier(mail, "mx.test", clock=clock)
        recorded = Recorded(b, monkeypatch)
        try:
            await recorded.run_until(QueueRunner(b, courier, clock=clock), N)
        finally:
            await b.close()
            courier.close()
        assert _xmins(dsn) == []  # every message delivered and removed
        assert _files(mail) == first  # the same names, no second copy
        return first

    asyncio.run(main())


def test_a_due_scan_reads_the_inline_bodies_with_the_rows(dsn: str, tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        queue = await open_queue(dsn, tmp_path, "node-a", clock)
        try:
            queue_id = await commit(queue, 1, ["bob@example.org", "carol@example.org"])
            await queue.wait_fresh()
            assert await queue.free_leases("node-a", recovered=False) == 2
            [pending] = await queue.take_due(limit=10, exclude=())
        finally:
            await queue.close()
        assert pending.message.queue_id == queue_id
        assert [str(r.address) for r in pending.recipients] == [
            "bob@example.org",
            "carol@example.org",
        ]
        assert pending.message.body is not None and b"Subject: 1\r\n" in pending.message.body

    asyncio.run(main())


def test_each_message_of_a_commit_group_gets_its_own_recipients_row_ids(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages committing together go in one transaction, in two statements (every message
    row, then every recipient row: queue/postgres_rows.py), and each message gets back the
    row ids of its own recipients, in their order. With inline bodies the transaction is the
    pipeline's implicit one: no BEGIN or COMMIT (queue/postgres.py `_insert`)."""

    async def main() -> None:
        queue = await open_queue(dsn, tmp_path, "node-a", FakeClock())
        transactions = Transactions(monkeypatch)
        try:
            wanted = {n: [f"r{n}-{k}@example.org" for k in range(1 + n % 3)] for n in range(N)}
            ids = await asyncio.gather(*(commit(queue, n, to) for n, to in wanted.items()))
            assert transactions.count == 0
            pending = {p.message.queue_id: p for p in await queue.wait_fresh()}
        finally:
            await queue.close()
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            rows = conn.execute("SELECT row_id, address, xmin::text FROM queue_recipients")
            by_id = {int(row_id): (address, xmin) for row_id, address, xmin in rows}
        # The first commit found no group running and went alone; the others joined one.
        xmins = [xmin for _, xmin in by_id.values()]
        assert max(xmins.count(x) for x in xmins) >= N - 1
        for n, queue_id in enumerate(ids):
            given = pending[queue_id].recipients
            assert [str(r.address) for r in given] == wanted[n]
            assert [by_id[r.row_id][0] for r in given] == wanted[n]

    asyncio.run(main())


def test_a_commit_group_and_its_outcomes_keep_every_octet_and_null(
    dsn: str, tmp_path: Path
) -> None:
    """The group's columns go to PostgreSQL as binary arrays (queue/postgres_rows.py
    `_unnest`, postgres_record.py): bodies of every octet (NUL, backslashes, quotes, braces:
    what a text array must escape) come back as they were, a group whose columns are all NULL
    (held: leased to nobody; no DSN parameters) is written, and an outcome's reply with
    quotes, backslashes and UTF-8 is recorded as it was."""
    bodies = [bytes(range(256)) * 4, b'\\x00{"a,b"}\\\\\x00\r\n' * 100, b"\xff" * 60000]
    reply = 'said "no" \\ {a,b} caf\u00e9'

    async def main() -> tuple[list[bytes], list[bytes]]:
        clock = FakeClock()
        queue = await open_queue(dsn, tmp_path, "node-a", clock)
        try:
            held: dict[str, str | None] = {HOLD_PARAM: None}
            ids = await asyncio.gather(*(commit_body(queue, b, held) for b in bodies))
            ids += await asyncio.gather(*(commit_body(queue, b) for b in bodies))
            await queue.wait_fresh()
            await queue.free_leases("node-a", recovered=False)
            taken = await queue.take_due(limit=10, exclude=())
            loaded = {p.message.queue_id: (await queue.load_body(p.message)).body for p in taken}
            for p in taken:
                updates = [RowUpdate(r.row_id, Status.QUEUED, 1, clock.now() + 60, reply, False)
                           for r in p.recipients]  # fmt: skip
                await queue.record(p.message.queue_id, updates)
        finally:
            await queue.close()
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            stored = conn.execute(
                "SELECT m.queue_id, m.prefix, r.lease_owner, r.last_reply FROM queue_messages m"
                " JOIN queue_recipients r USING (queue_id)"
            ).fetchall()
        by_id = {str(q): (bytes(p), owner, last) for q, p, owner, last in stored}
        assert all(prefix == b"\x00\\" for prefix, _, _ in by_id.values())
        assert [by_id[q][1:] for q in ids[:3]] == [(None, None)] * 3  # held: nobody's
        assert [by_id[q][1:] for q in ids[3:]] == [(None, reply)] * 3  # recorded, freed
        return [loaded[q] or b"" for q in ids[3:]], bodies

    got, bodies = asyncio.run(main())
    assert got == bodies


def test_release_removes_a_streamed_body_file_and_leaves_no_file_behind(
    dsn: str, tmp_path: Path
) -> None:
    """A body too large to go inline is streamed into a scratch file by `load_body`, and
    `release` removes it (only such bodies have a file: an inline one's release touches
    nothing); the scratch directory ends empty either way."""
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 80000  # ~1.3 MB: chunked

    async def main() -> tuple[bytes, list[str], list[str]]:
        queue = await open_queue(dsn, tmp_path, "node-a", FakeClock())
        try:
            for body in (big, b"Subject: small\r\n\r\nhi\r\n"):
                await commit_body(queue, body)
            loaded = [await queue.load_body(p.message) for p in await queue.wait_fresh()]
            streamed = next(m for m in loaded if m.body_path)
            data = await asyncio.to_thread(Path(streamed.body_path).read_bytes)
            before = sorted(os.listdir(queue.messages_dir))
            for message in loaded:
                queue.release(message.queue_id)
            return data, before, sorted(os.listdir(queue.messages_dir))
        finally:
            await queue.close()

    data, before, after = asyncio.run(main())
    assert data == big
    assert len(before) == 1  # the streamed body's file, none for the inline one
    assert after == []


def test_bodies_a_due_scan_left_out_are_read_together_not_one_statement_each(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due scan reads inline bodies up to its budget (DUE_BODIES); the messages past it get
    theirs at `load_body`, in one statement for the lot (queue/postgres.py `_kept_body`),
    each body its own, and one released before its turn is forgotten."""
    monkeypatch.setattr(postgres, "DUE_BODIES", 2500)  # two bodies of ~1 KiB a scan

    async def main() -> tuple[dict[str, bytes], int, int, int]:
        queue = await open_queue(dsn, tmp_path, "node-a", FakeClock())
        try:
            for n in range(7):
                await commit_body(queue, f"Subject: {n}\r\n\r\n".encode() + bytes([n]) * 1000)
            await queue.wait_fresh()
            await queue.free_leases("node-a", recovered=False)
            taken = await queue.take_due(limit=10, exclude=())
            statements = 0
            real = queue._run

            async def counted(*args: Any, **kwargs: Any) -> list[Any]:
                nonlocal statements
                statements += 1
                return await real(*args, **kwargs)

            monkeypatch.setattr(queue, "_run", counted)
            inline = sum(p.message.body is not None for p in taken)
            *rest, last = [p.message for p in taken if p.message.body is None]
            queue.release(last.queue_id)  # given up before its turn: not kept
            bodies = {m.queue_id: (await queue.load_body(m)).body or b"" for m in rest}
            after_group = statements
            again = await queue.load_body(last)  # read alone, as before
            assert again.body is not None and again.body.endswith(bytes([6]) * 1000)
            return bodies, inline, after_group, statements
        finally:
            await queue.close()

    bodies, inline, after_group, statements = asyncio.run(main())
    assert inline == 2
    assert len(bodies) == 4
    for body in bodies.values():
        n = int(body.split(b"Subject: ")[1].split(b"\r\n")[0])
        assert body.endswith(bytes([n]) * 1000)
    assert after_group == 1  # four bodies, one statement
    assert statements == 2


def _rows(dsn: str) -> list[tuple[str, str, int, str | None]]:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT queue_id, status, attempts, lease_owner FROM queue_recipients ORDER BY row_id"
        ).fetchall()
    return [(str(q), str(s), int(a), o) for q, s, a, o in rows]


def test_an_outcome_group_is_all_or_nothing_without_begin_or_commit(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome group's UPDATE and DELETE are one implicit transaction of PostgreSQL's
    pipeline, with no BEGIN or COMMIT sent (postgres_record.py): when the DELETE fails, the
    UPDATE before it is rolled back too (no row marked delivered whose message stays), and
    once it can run, the finished message goes with its rows (ON DELETE CASCADE of rows the
    same transaction updated) while the deferred one's rows are updated and freed."""

    async def main() -> None:
        clock = FakeClock()
        queue = await open_queue(dsn, tmp_path, "node-a", clock)
        try:
            done_id = await commit(queue, 0, ["bob@example.org", "carol@example.org"])
            later_id = await commit(queue, 1, ["dave@example.org"])
            pending = {p.message.queue_id: p for p in await queue.wait_fresh()}
            before = _rows(dsn)
            with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
                conn.execute(
                    "CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'no delete today'; END $$"
                )
                conn.execute(
                    "CREATE TRIGGER no_delete BEFORE DELETE ON queue_messages"
                    " FOR EACH ROW EXECUTE FUNCTION no_delete()"
                )

            async def both() -> list[bool | BaseException]:
                done = [RowUpdate(r.row_id, Status.DELIVERED, 1, clock.now(), "ok", False)
                        for r in pending[done_id].recipients]  # fmt: skip
                later = [RowUpdate(r.row_id, Status.QUEUED, 1, clock.now() + 60, "451", False)
                         for r in pending[later_id].recipients]  # fmt: skip
                return list(await asyncio.gather(
                    queue.record(done_id, done), queue.record(later_id, later),
                    return_exceptions=True,
                ))  # fmt: skip

            transactions = Transactions(monkeypatch)
            failed = await both()
            assert all(isinstance(f, QueueWriteError) for f in failed), failed
            assert _rows(dsn) == before  # nothing of the group: the UPDATE rolled back too
            with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
                conn.execute("DROP TRIGGER no_delete ON queue_messages")
            assert await both() == [True, False]
            assert transactions.count == 0
        finally:
            await queue.close()
        assert _rows(dsn) == [(later_id, "queued", 1, None)]

    asyncio.run(main())


def test_a_busy_node_keeps_the_bodies_it_committed_unleased_for_its_own_scan(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every delivery slot taken, a commit goes leased to nobody (for any node's due
    scan); the node keeps those inline bodies (postgres_rows.py `OwnBodies`, at most
    DUE_BODIES octets, the oldest forgotten first), so its own scan takes the rows without
    reading the bodies back. Seen here by changing the stored bodies behind its back: the
    kept ones come as committed, the one forgotten (past the bound) as now stored, and a
    message committed while a slot was free is not kept."""
    monkeypatch.setattr(postgres, "DUE_BODIES", 2500)  # two bodies of ~1 KiB kept

    async def main() -> dict[str, bytes]:
        queue = await open_queue(dsn, tmp_path, "node-a", FakeClock())
        busy = True
        watching = asyncio.create_task(queue.watch(lambda: None, lambda: busy))
        try:
            await asyncio.sleep(0)
            for n in range(3):
                await commit_body(queue, f"Subject: {n}\r\n\r\n".encode() + bytes([n]) * 1000)
            busy = False
            await commit_body(queue, b"Subject: 3\r\n\r\n" + bytes([3]) * 1000)
            await queue.wait_fresh()
            await queue.free_leases("node-a", recovered=False)
            with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
                conn.execute("UPDATE queue_messages SET body = body || 'changed'::bytea")
            taken = await queue.take_due(limit=10, exclude=())
            loaded = [await queue.load_body(p.message) for p in taken]
            return {m.body.split(b"\r\n")[0].decode(): m.body for m in loaded if m.body}
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await queue.close()

    bodies = asyncio.run(main())
    assert sorted(bodies) == ["Subject: 0", "Subject: 1", "Subject: 2", "Subject: 3"]
    # 0 forgotten (the bound), 3 committed leased here (never kept): read as stored now.
    assert [bodies[f"Subject: {n}"].endswith(b"changed") for n in range(4)] == [
        True, False, False, True,
    ]  # fmt: skip
