from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from pathlib import Path

import pytest
from queue_fakes import MIB, addr, commit_message, open_queue, rcpts, run

from hato.model import RecipientDsn
from hato.queue import Queue, QueueWriteError
from kit.clock import T0, FakeClock


def rows(root: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(root / "queue.db") as conn:
        return conn.execute(sql, args).fetchall()


def bodies(root: Path) -> list[str]:
    """The spool files (bodies that reached 64 KiB; smaller ones are inline in their row)."""
    return sorted(os.listdir(root / "messages"))


BIG = b"0123456789abcde\n" * 4200  # 67,200 octets: over the 64 KiB flush size, a spool file


def test_a_commit_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    async def main() -> str:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            return await commit_message(
                queue, b"Subject: x\r\n\r\nbody\r\n", to=("bob@example.org", "carol@example.net")
            )
        finally:
            await queue.close()

    queue_id = run(main)
    assert bodies(tmp_path) == []  # a small body is stored inline, in the same transaction
    assert rows(
        tmp_path, "SELECT queue_id, mail_from, received_at, size, prefix, body FROM messages"
    ) == [
        (
            queue_id,
            "<alice@example.com>",
            T0,
            20,
            b"Received: by test\r\n",
            b"Subject: x\r\n\r\nbody\r\n",
        )
    ]
    assert rows(tmp_path, "SELECT address, status, attempts, lease_owner FROM recipients") == [
        ("bob@example.org", "queued", 0, "node-a"),
        ("carol@example.net", "queued", 0, "node-a"),
    ]
    assert rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    assert (tmp_path / "messages").stat().st_mode & 0o777 == 0o700


def test_large_bodies_stream_in_chunks_and_keep_every_byte(tmp_path: Path) -> None:
    chunk = bytes(range(256)) * 100  # 25.6 KB, not a multiple of the 64 KiB flush size

    async def main() -> str:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            writer = queue.new_body()
            for _ in range(41):
                writer.write(chunk)
            assert writer.size == 41 * len(chunk)
            return await queue.commit(
                writer, mail_from=None, recipients=rcpts("b@example.org"), prefix=b"", params={}
            )
        finally:
            await queue.close()

    queue_id = run(main)
    assert (tmp_path / "messages" / queue_id).read_bytes() == chunk * 41
    assert rows(tmp_path, "SELECT mail_from, size, body FROM messages") == [
        ("<>", 41 * len(chunk), None)
    ]


def test_many_concurrent_commits_all_land_with_unique_ordered_ids(tmp_path: Path) -> None:
    async def main() -> list[str]:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            ids = await asyncio.gather(
                *(
                    commit_message(queue, b"m%d\r\n" % i, to=(f"u{i}@example.org",))
                    for i in range(200)
                )
            )
            assert queue.writer.batches < 200  # group commit did group
            return ids
        finally:
            await queue.close()

    ids = run(main)
    assert len(set(ids)) == 200
    assert ids == sorted(ids)  # bodies were opened in this order
    assert bodies(tmp_path) == []
    stored = rows(tmp_path, "SELECT queue_id, body FROM messages ORDER BY queue_id")
    assert stored == [(queue_id, b"m%d\r\n" % i) for i, queue_id in enumerate(ids)]
    assert rows(tmp_path, "SELECT COUNT(*) FROM recipients") == [(200,)]


def test_reopening_recovers_orphans_and_frees_leases(tmp_path: Path) -> None:
    clock = FakeClock()

    async def first_life() -> tuple[str, str]:
        queue = await open_queue(tmp_path, clock)
        kept = await commit_message(queue, BIG)
        orphan = queue.new_body()  # the process dies before DATA ends: never got 250
        orphan.write(b"half a message" * 10_000)  # over 64 KiB: the file exists
        await queue.close()
        return kept, orphan.queue_id

    kept, orphan_id = run(first_life)
    assert bodies(tmp_path) == sorted([kept, orphan_id])

    async def second_life() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            assert queue.problems == ()
            due = await queue.take_due(limit=10, exclude=())
            assert [p.message.queue_id for p in due] == [kept]
            (rcpt,) = due[0].recipients
            assert rcpt.recovered and rcpt.address == addr("bob@example.org")
            assert due[0].message.prefix == b"Received: by test\r\n"
            assert due[0].message.params == {"BODY": "8BITMIME"}
        finally:
            await queue.close()

    run(second_life)
    assert bodies(tmp_path) == [kept]


def test_a_row_without_its_body_is_held_and_reported(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        queue_id = await commit_message(queue, BIG)
        inline_id = await commit_message(queue)  # inline: no file to miss
        await queue.close()
        os.unlink(tmp_path / "messages" / queue_id)
        queue = await open_queue(tmp_path, clock)
        try:
            assert queue.problems == (f"event=body-missing id={queue_id} action=held",)
            due = await queue.take_due(limit=10, exclude=())
            assert [(p.message.queue_id, p.message.body_path) for p in due] == [(inline_id, "")]
            assert due[0].message.body is None  # a scan holds no bodies: loaded per attempt
            loaded = await queue.load_body(due[0].message)
            assert loaded.body == b"Subject: hi\r\n\r\nhello\r\n"
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "SELECT status FROM recipients ORDER BY row_id") == [
        ("held",),
        ("queued",),
    ]


def _assert_nothing_queued(root: Path) -> None:
    assert bodies(root) == []
    assert rows(root, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert rows(root, "SELECT COUNT(*) FROM recipients") == [(0,)]


def test_enospc_while_writing_is_reported_at_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            writer = queue.new_body()
            monkeypatch.setattr("hato.queue.body.os.write", full)
            writer.write(b"x" * 100_000)  # over the flush size: the write fails, silently
            writer.write(b"more DATA the session keeps reading")
            assert writer.error is not None and writer.size == 100_035
            with pytest.raises(QueueWriteError) as info:
                await queue.commit(
                    writer, mail_from=None, recipients=rcpts("b@example.org"), prefix=b"", params={}
                )
            assert info.value.insufficient_storage
            assert (info.value.reply.code, info.value.reply.enhanced) == (452, "4.3.1")
        finally:
            await queue.close()

    run(main)
    _assert_nothing_queued(tmp_path)


def test_an_fsync_error_fails_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            monkeypatch.setattr("hato.queue.body.os.fsync", broken)
            with pytest.raises(QueueWriteError) as info:
                await commit_message(queue, BIG)
            assert info.value.errno == errno.EIO and not info.value.insufficient_storage
            assert info.value.reply.code == 451
        finally:
            await queue.close()

    run(main)
    _assert_nothing_queued(tmp_path)


def test_a_full_database_fails_only_the_message_that_does_not_fit(tmp_path: Path) -> None:
    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            await commit_message(queue, BIG)
            # A real SQLITE_FULL: cap the database file at its current size plus a little.
            (pages,) = await queue._write(lambda c: c.execute("PRAGMA page_count").fetchone())
            await queue._write(lambda c: c.execute(f"PRAGMA max_page_count={pages + 4}"))
            small = commit_message(queue, BIG, to=("small@example.org",))
            huge = commit_message(queue, BIG, to=("huge@example.org",), prefix=b"X" * MIB)
            inline = commit_message(queue, b"x" * 60_000, to=("inline@example.org",))
            results = await asyncio.gather(small, huge, inline, return_exceptions=True)
            assert isinstance(results[0], str)
            for refused in results[1:]:
                assert isinstance(refused, QueueWriteError) and refused.insufficient_storage
            assert sorted(bodies(tmp_path)) == sorted(
                str(r[0]) for r in rows(tmp_path, "SELECT queue_id FROM messages")
            )
        finally:
            await queue.close()

    run(main)
    addresses = rows(tmp_path, "SELECT address FROM recipients ORDER BY row_id")
    assert addresses == [("bob@example.org",), ("small@example.org",)]
    assert len(bodies(tmp_path)) == 2


def test_a_body_file_that_cannot_be_created_fails_at_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_inodes(path: str, *args: int) -> int:
        if str(path).startswith(str(tmp_path / "messages")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args)

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            small = queue.new_body()
            small.write(b"data")  # under 64 KiB: never a file, stored inline in its row
            big = queue.new_body()
            monkeypatch.setattr("hato.queue.body.os.open", no_inodes)
            big.write(b"x" * 70_000)
            assert big.error is not None and small.error is None
            with pytest.raises(QueueWriteError) as info:
                await queue.commit(
                    big, mail_from=None, recipients=rcpts("b@example.org"), prefix=b"", params={}
                )
            assert info.value.insufficient_storage
            await queue.commit(
                small, mail_from=None, recipients=rcpts("c@example.org"), prefix=b"", params={}
            )
        finally:
            monkeypatch.undo()
            await queue.close()

    run(main)
    assert bodies(tmp_path) == []
    assert rows(tmp_path, "SELECT body FROM messages") == [(b"data",)]
    assert rows(tmp_path, "SELECT address FROM recipients") == [("c@example.org",)]


def test_a_cancelled_commit_still_lands_and_reaches_the_runner(tmp_path: Path) -> None:
    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            task = asyncio.ensure_future(commit_message(queue))
            await asyncio.sleep(0)
            task.cancel()
            fresh = await asyncio.wait_for(queue.wait_fresh(), 30)
            assert [p.recipients[0].address for p in fresh] == [addr("bob@example.org")]
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "SELECT COUNT(*) FROM messages WHERE body IS NOT NULL") == [(1,)]
    assert rows(tmp_path, "SELECT COUNT(*) FROM recipients") == [(1,)]


def test_discard_removes_the_file_and_writes_after_commit_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            dropped = queue.new_body()
            dropped.write(b"abc")
            dropped.discard()
            dropped.discard()
            assert bodies(tmp_path) == []
            writer = queue.new_body()
            await queue.commit(
                writer, mail_from=None, recipients=rcpts("b@example.org"), prefix=b"", params={}
            )
            with pytest.raises(RuntimeError):
                writer.write(b"late")
            with pytest.raises(ValueError):
                await queue.commit(
                    queue.new_body(), mail_from=None, recipients=[], prefix=b"", params={}
                )
        finally:
            await queue.close()

    run(main)


def test_has_room_asks_every_time_near_the_limit_and_caches_only_far_above(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    free = [500 * MIB]
    calls: list[Path] = []

    def free_space(path: Path) -> int:
        calls.append(path)
        return free[0]

    async def main() -> None:
        queue = await Queue.open(
            tmp_path, clock=clock, node_id="n", free_space=free_space, min_free=100 * MIB
        )
        try:
            assert queue.has_room()
            assert queue.has_room(200 * MIB)  # 100 MiB + 2 x 200 MiB = 500 MiB
            assert not queue.has_room(201 * MIB)
            free[0] = 50 * MIB  # the disk just filled: seen at once, no stale figure
            assert not queue.has_room()
            free[0] = 150 * MIB  # and freed again
            assert queue.has_room()
            assert len(calls) == 5
            free[0] = 10_000 * MIB  # far above the limit: one figure serves a second
            assert queue.has_room()
            free[0] = 50 * MIB
            assert queue.has_room()  # cached: a second of intake cannot use 9 GiB up
            assert len(calls) == 6
            clock.advance(1.0)
            assert not queue.has_room()
            assert len(calls) == 7
        finally:
            await queue.close()

    run(main)


def test_the_directory_is_fsynced_once_per_batch_and_its_failure_fails_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dir_syncs: list[int] = []
    real_fsync = os.fsync

    dir_fd: list[int] = []

    def counting(fd: int) -> None:  # os.fsync is patched for the process: count the directory
        if fd in dir_fd:
            dir_syncs.append(fd)
        real_fsync(fd)

    def broken(fd: int) -> None:
        if fd in dir_fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        dir_fd.append(queue._dir_fd)
        try:
            monkeypatch.setattr("hato.queue.writer.os.fsync", counting)
            await asyncio.gather(*(commit_message(queue) for _ in range(20)))
            assert dir_syncs == []  # inline bodies: no file, no directory entry to sync
            batches = queue.writer.batches
            await asyncio.gather(*(commit_message(queue, BIG) for _ in range(30)))
            assert 1 <= len(dir_syncs) == queue.writer.batches - batches < 30
            monkeypatch.setattr("hato.queue.writer.os.fsync", broken)
            await commit_message(queue)  # inline: the directory is not involved
            with pytest.raises(QueueWriteError):
                await commit_message(queue, BIG)
        finally:
            await queue.close()

    run(main)
    assert len(bodies(tmp_path)) == 30
    assert rows(tmp_path, "SELECT COUNT(*) FROM messages") == [(51,)]


def test_a_bug_in_one_batch_fails_that_batch_and_the_writer_lives_on(tmp_path: Path) -> None:
    def buggy(conn: sqlite3.Connection) -> None:
        raise KeyError("a bug")

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            with pytest.raises(QueueWriteError) as info:
                await queue._write(buggy)
            assert info.value.errno is None and info.value.reply.code == 451
            assert await commit_message(queue)
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "SELECT COUNT(*) FROM messages") == [(1,)]


def test_a_version_1_store_is_upgraded_and_its_file_bodies_still_deliver(tmp_path: Path) -> None:
    (tmp_path / "messages").mkdir()
    (tmp_path / "messages" / "01OLD").write_bytes(b"old body\r\n")
    with sqlite3.connect(tmp_path / "queue.db") as conn:
        conn.executescript(
            "CREATE TABLE messages (queue_id TEXT PRIMARY KEY, mail_from TEXT NOT NULL,"
            " received_at REAL NOT NULL, size INTEGER NOT NULL, prefix BLOB NOT NULL,"
            " params TEXT NOT NULL);"
            "INSERT INTO messages VALUES ('01OLD', '<a@example.com>', 1.5, 10, x'', '{}');"
        )

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            assert queue.problems == ()
            await queue._write(
                lambda c: c.execute(
                    "INSERT INTO recipients (queue_id, address, original, status,"
                    " next_attempt, updated_at) VALUES ('01OLD', 'b@example.org',"
                    " 'b@example.org', 'queued', 0, 0)"
                )
            )
            (due,) = await queue.take_due(limit=10, exclude=())
            assert due.message.body is None
            assert due.message.body_path == str(tmp_path / "messages" / "01OLD")
            await commit_message(queue)  # and new mail is stored inline
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "PRAGMA user_version") == [(3,)]
    assert rows(tmp_path, "SELECT queue_id, body IS NULL FROM messages ORDER BY body") == [
        ("01OLD", 1),
        (rows(tmp_path, "SELECT queue_id FROM messages WHERE body IS NOT NULL")[0][0], 0),
    ]


def test_inline_bodies_held_for_the_runner_stay_within_a_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hato.queue.store.FRESH_BODY_BUDGET", 25_000)
    body = b"x" * 10_000

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            for _ in range(3):
                await commit_message(queue, body)
            fresh = await queue.wait_fresh()
            # Two fit in the budget; the third goes without its body, loaded when its turn comes.
            assert [p.message.body is not None for p in fresh] == [True, True, False]
            third = fresh[2].message
            assert third.body_path == "" and (await queue.load_body(third)).body == body
            queue.release(fresh[0].message.queue_id)  # one attempt done: room again
            await commit_message(queue, body)
            (fourth,) = await queue.wait_fresh()
            assert fourth.message.body == body
        finally:
            await queue.close()

    run(main)


def test_notify_and_orcpt_are_kept_per_recipient_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    dsn = RecipientDsn.from_params({"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;B+2B1@x.org"})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        body = queue.new_body()
        body.write(b"hi\r\n")
        await queue.commit(
            body,
            mail_from=addr("a@example.com"),
            recipients=[
                (addr("b@example.org"), addr("b@example.org"), dsn),
                (addr("c@example.org"), addr("c@example.org")),  # the plain form still works
            ],
            prefix=b"",
            params={"RET": "HDRS", "ENVID": "e1"},
        )
        (fresh,) = await queue.wait_fresh()
        assert [r.dsn for r in fresh.recipients] == [dsn, RecipientDsn()]
        await queue.close()
        clock.advance(10)
        queue = await open_queue(tmp_path, clock)
        try:
            (due,) = await queue.take_due(limit=10, exclude=())
            assert [r.dsn for r in due.recipients] == [dsn, RecipientDsn()]
            assert due.message.params == {"RET": "HDRS", "ENVID": "e1"}
            # RFC 3461 §5.2.5 (one warning): the first claim wins, every later one loses.
            assert await queue.claim_delay_warning(due.message.queue_id)
            assert not await queue.claim_delay_warning(due.message.queue_id)
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "SELECT notify, orcpt FROM recipients ORDER BY row_id") == [
        ("SUCCESS,DELAY", "rfc822;B+1@x.org"),
        (None, None),
    ]


def test_a_version_2_store_is_upgraded_in_place(tmp_path: Path) -> None:
    (tmp_path / "messages").mkdir()
    with sqlite3.connect(tmp_path / "queue.db") as conn:
        conn.executescript(
            "CREATE TABLE messages (queue_id TEXT PRIMARY KEY, mail_from TEXT NOT NULL,"
            " received_at REAL NOT NULL, size INTEGER NOT NULL, prefix BLOB NOT NULL,"
            " params TEXT NOT NULL, body BLOB);"
            "CREATE TABLE recipients (row_id INTEGER PRIMARY KEY, queue_id TEXT NOT NULL,"
            " address TEXT NOT NULL, original TEXT NOT NULL, status TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, last_reply TEXT,"
            " lease_owner TEXT, lease_until REAL, recovered INTEGER NOT NULL DEFAULT 0,"
            " updated_at REAL NOT NULL);"
            "INSERT INTO messages VALUES ('01OLD', '<a@example.com>', 1.5, 4, x'', '{}', x'6869');"
            "INSERT INTO recipients (queue_id, address, original, status, next_attempt,"
            " updated_at) VALUES ('01OLD', 'b@example.org', 'b@example.org', 'queued', 0, 0);"
            "PRAGMA user_version=2;"
        )

    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock())
        try:
            (due,) = await queue.take_due(limit=10, exclude=())
            assert due.recipients[0].dsn == RecipientDsn()  # RFC 3461 §4.1 defaults
            assert await queue.claim_delay_warning("01OLD")
        finally:
            await queue.close()

    run(main)
    assert rows(tmp_path, "PRAGMA user_version") == [(3,)]
    assert rows(tmp_path, "SELECT delay_warned FROM messages") == [(1,)]


def test_recover_offline_and_release_leases_for_several_processes(tmp_path: Path) -> None:
    """A supervisor recovers once before its workers start; a dead worker's leases are freed
    (and marked recovered) without touching a living sibling's."""
    import sqlite3

    from hato.queue import recover_offline, release_leases

    root = tmp_path / "q"
    assert recover_offline(root, 1000.0) == []
    conn = sqlite3.connect(root / "queue.db")
    conn.execute(
        "INSERT INTO messages (queue_id, mail_from, received_at, size, prefix, params)"
        " VALUES ('M1', '', 1.0, 1, x'', '{}')"
    )
    for row, owner in ((1, "host:w0"), (2, "host:w1")):
        conn.execute(
            "INSERT INTO recipients (row_id, queue_id, address, original, status, attempts,"
            " next_attempt, lease_owner, lease_until, updated_at)"
            " VALUES (?, 'M1', 'a@example.org', 'a@example.org', 'queued', 0, 0, ?, 9e9, 0)",
            (row, owner),
        )
    conn.commit()
    assert release_leases(root, "host:w1", 2000.0) == 1
    rows = dict(conn.execute("SELECT row_id, lease_owner FROM recipients").fetchall())
    recovered = dict(conn.execute("SELECT row_id, recovered FROM recipients").fetchall())
    conn.close()
    assert rows == {1: "host:w0", 2: None}
    assert recovered == {1: 0, 2: 1}
