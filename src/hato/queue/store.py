"""The SQLite backend of `QueueStore` (queue/protocol.py): spool files plus the SQLite store,
behind one asyncio API. Its statements are in `sqlite.py` and `sqlite_admin.py`.

Must not import anything of hato but model and this room.

Theory of operation (DESIGN.md: 250 means durable). `new_body()` gives the session a
`BodyWriter` to stream the body into; it stays in memory up to 64 KiB and only then becomes
the file `root/messages/<queue_id>` (O_EXCL, 0600). At `commit()`:
- a body still in memory (most mail) goes straight to the group-commit writer thread and is
  inserted as a BLOB in the message row, in the same transaction as the recipient rows: no
  file, no fsync of its own, no directory fsync, no unlink later; the batch's one WAL fsync
  (synchronous=FULL) makes it durable;
- a body that became a file goes to a small thread pool that writes the rest, fsyncs and
  closes it (concurrent fsyncs share journal commits), then to the writer thread, which
  fsyncs the directory once per batch and inserts the rows.
`commit()` returns only after that transaction is durable; the event loop never waits on an
fsync or on SQLite. A message row is the commit point: a body file without one is deleted
at the next open, and a failed commit deletes its body at once.
The new message is handed to the runner in memory (no polling), its rows already leased
to this node in the same transaction.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import errno
import logging
import os
import random
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hato.model import (
    Address,
    Clock,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    ReversePath,
    format_path,
    logfmt,
)
from hato.model.queuestore import NewMessage, Pending, RowUpdate
from hato.queue import sqlite as store
from hato.queue.body import BodyWriter, QueueWriteError
from hato.queue.commit import log_refused, sealed_message
from hato.queue.ids import QueueIdGenerator, Rng
from hato.queue.sqlite_admin import AdminJobs
from hato.queue.writer import GroupCommitWriter, Job

log = logging.getLogger("hato.queue")

T = TypeVar("T")

MIB = 1024 * 1024
# Like Postfix's queue_minfree: refuse new mail (452 at MAIL FROM) below this much free space,
# plus twice the announced SIZE (room for the body and for the database and logs beside it).
DEFAULT_MIN_FREE = 100 * MIB
FREE_SPACE_CACHE = 1.0  # seconds a free-space figure may be reused ...
FREE_SPACE_MARGIN = 512 * MIB  # ... and only while it is this far above what is needed
# Queue parameter: commit the message held, tried only after `hato queue release` (a milter's
# SMFIR_QUARANTINE: Postfix's hold queue).
HOLD_PARAM = "hato.hold"
DEFAULT_LEASE = 900.0  # seconds a node holds rows it is delivering
# Inline bodies handed to the runner in memory at most (RSS stays bounded under a backlog);
# past it, new messages go to the runner without their body, which it loads when it starts
# their attempt (`load_body`).
FRESH_BODY_BUDGET = 8 * MIB


def statvfs_free(path: Path) -> int:
    """Bytes available to unprivileged users on the file system of `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _sqlite_errno(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    # SQLITE_FULL (13) is a full disk; anything else is an I/O or internal error to us.
    return errno.ENOSPC if code == sqlite3.SQLITE_FULL else errno.EIO


def _as_write_error(exc: BaseException, what: str) -> QueueWriteError:
    if isinstance(exc, QueueWriteError):
        return exc
    if isinstance(exc, OSError):
        return QueueWriteError.from_os(exc, what)
    if isinstance(exc, sqlite3.Error):
        return QueueWriteError(_sqlite_errno(exc), f"{what}: {exc}")
    return QueueWriteError(None, f"{what}: {type(exc).__name__}: {exc}")


class Queue(AdminJobs):
    """Open with `await Queue.open(...)`; close with `await queue.close()`."""

    def __init__(
        self,
        *,
        root: Path,
        clock: Clock,
        node_id: str,
        rng: Rng,
        conn: sqlite3.Connection,
        dir_fd: int,
        problems: Sequence[str],
        min_free: int,
        lease_seconds: float,
        fsync_threads: int,
        free_space: Callable[[Path], int],
        id_slot: int = 0,
        live: bool = True,
    ) -> None:
        self.root = root
        self.live = live
        self.messages_dir = str(root / "messages")
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.problems: tuple[str, ...] = tuple(problems)
        self._clock = clock
        # Ids need uniqueness, not secrecy: a seeded generator, not a getrandom(2) per id.
        self._ids = QueueIdGenerator(clock, random.Random(rng.getrandbits(64)), id_slot)
        self._conn = conn
        self._dir_fd = dir_fd
        self._min_free = min_free
        self._free_space = free_space
        self._free: int | None = None
        self._free_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=fsync_threads, thread_name_prefix="hato-fsync"
        )
        self.writer = GroupCommitWriter(conn, dir_fd, self._loop, str(root / "writer.lock"))
        self.writer.start()
        self._fresh: collections.deque[Pending] = collections.deque()
        self._fresh_ready = asyncio.Event()
        self._held: dict[str, int] = {}  # inline bodies handed over in memory: id -> octets
        self._held_bytes = 0
        self._closed = False
        self._pending: set[asyncio.Future[Any]] = set()  # commits and writes not yet settled

    @classmethod
    async def open(
        cls,
        root: Path,
        *,
        clock: Clock,
        node_id: str,
        rng: Rng | None = None,
        min_free: int = DEFAULT_MIN_FREE,
        lease_seconds: float = DEFAULT_LEASE,
        fsync_threads: int = 4,
        free_space: Callable[[Path], int] = statvfs_free,
        recover: bool = True,
        id_slot: int = 0,
        live: bool = True,
    ) -> Queue:
        """Create the directories (0700), open the store, and recover (see `store.recover`).

        With several server processes on one queue, only the supervisor recovers, before any
        worker starts (`recover_offline`): a worker must not take an orphan-looking body file of
        a sibling's message in progress for a leftover, so workers open with `recover=False`,
        and each with its own `id_slot` (its index), so no two make the same queue id.
        `live=False`: no server runs (an offline tool holds its lock), so no lease is live."""
        now = clock.now()

        def setup() -> tuple[sqlite3.Connection, int, list[str]]:
            os.makedirs(root / "messages", mode=0o700, exist_ok=True)
            conn = store.connect(str(root / "queue.db"))
            try:
                problems = store.recover(conn, str(root / "messages"), now=now) if recover else []
                dir_fd = os.open(root / "messages", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except BaseException:
                conn.close()
                raise
            return conn, dir_fd, problems

        conn, dir_fd, problems = await asyncio.to_thread(setup)
        return cls(
            root=root,
            clock=clock,
            node_id=node_id,
            rng=rng if rng is not None else random.SystemRandom(),
            conn=conn,
            dir_fd=dir_fd,
            problems=problems,
            min_free=min_free,
            lease_seconds=lease_seconds,
            fsync_threads=fsync_threads,
            free_space=free_space,
            id_slot=id_slot,
            live=live,
        )

    # ---- receiving ----

    def has_room(self, size_hint: int = 0) -> bool:
        """Whether to take a new message of about `size_hint` octets (RFC 1870 SIZE=): not below
        `min_free + 2 * size_hint` free bytes (452 4.3.1 at MAIL, RFC 1870 §6.2, RFC 3463 §3.4)."""
        needed = self._min_free + 2 * max(size_hint, 0)
        now = self._clock.monotonic()
        # statvfs costs ~2 us: reuse a figure only when it was far above the limit (a second
        # of intake cannot use the margin up); near the limit, ask every time, so a disk that
        # just filled (or was just freed) is seen at once.
        fresh = self._free is not None and now - self._free_at < FREE_SPACE_CACHE
        if not (fresh and self._free is not None and self._free >= needed + FREE_SPACE_MARGIN):
            try:
                self._free = self._free_space(self.root)
            except OSError as exc:
                log.error(logfmt("statvfs-failed", error=exc.strerror))
                self._free = 0
            self._free_at = now
        return self._free >= needed

    def new_body(self) -> BodyWriter:
        """A new body to stream into (in memory; a spool file only once 64 KiB have come)."""
        self._check_open()
        queue_id = self._ids.next()
        return BodyWriter(queue_id, os.path.join(self.messages_dir, queue_id))

    async def commit(
        self,
        body: BodyWriter,
        *,
        mail_from: ReversePath,
        recipients: Sequence[tuple[Address, Address] | tuple[Address, Address, RecipientDsn]],
        prefix: bytes,
        params: Mapping[str, str | None],
        unkeyed: Collection[str] = (),
    ) -> str:
        """Make the message durable and return its queue id; only then may the session say 250.

        `recipients`: (deliver-to, original RCPT TO) pairs, or triples with the RCPT's
        RFC 3461 NOTIFY/ORCPT as a `RecipientDsn` (`RecipientDsn.from_params(rcpt.params)`).
        `params`: the MAIL parameters (RET and ENVID among them, RFC 3461 §4.3, §4.4).

        Raises QueueWriteError (the body is gone, no row exists) if that cannot be done.
        `unkeyed` is not checked here: the keys are not in this store (protocol.py).
        """
        self._check_open()
        msg = sealed_message(
            body,
            mail_from=mail_from,
            recipients=recipients,
            prefix=prefix,
            params=params,
            clock=self._clock,
        )
        lease_until = msg.received_at + self.lease_seconds
        held = HOLD_PARAM in params
        future: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        job: Job[tuple[int, ...]] = Job(
            run=lambda conn: store.insert_message(
                conn, msg, node_id=self.node_id, lease_until=lease_until, held=held
            ),
            future=future,
            sync_dir=msg.body is None,
            on_failure=body.discard,
            on_loop=lambda row_ids: self._queued(msg, row_ids, lease_until, held),
        )
        self._track(future)
        if msg.body is None:
            self._pool.submit(self._seal_then_insert, body, job)
        else:
            self.writer.submit(job)  # nothing to fsync but the WAL: no pool, no file
        try:
            await future
        except (OSError, sqlite3.Error, ValueError, QueueWriteError) as exc:
            error = _as_write_error(exc, "commit")
            log_refused(body.queue_id, error)
            raise error from exc
        return msg.queue_id

    def _seal_then_insert(self, body: BodyWriter, job: Job[tuple[int, ...]]) -> None:
        """In the fsync pool: make the body durable, then queue the rows for the writer."""
        try:
            body.seal()
        except OSError as exc:
            body.discard()
            self._loop.call_soon_threadsafe(_fail, job.future, exc)
            return
        self.writer.submit(job)

    def _queued(
        self, msg: NewMessage, row_ids: tuple[int, ...], lease_until: float, held: bool
    ) -> None:
        """On the loop, once the rows are durable: log and hand the message to the runner
        (unless held: it waits for `hato queue release`)."""
        log.info(
            logfmt(
                "queued",
                id=msg.queue_id,
                size=msg.size,
                nrcpt=len(row_ids),
                held=held or None,
                **{"from": format_path(msg.mail_from)},
            )
        )
        if held:
            return
        body = msg.body
        if body is not None:
            if self._held_bytes + len(body) > FRESH_BODY_BUDGET:
                body = None  # still in its row: the runner loads it when its turn comes
            else:
                self._held[msg.queue_id] = len(body)
                self._held_bytes += len(body)
        message = QueuedMessage(
            queue_id=msg.queue_id,
            mail_from=msg.mail_from,
            received_at=msg.received_at,
            body_path="" if msg.body is not None else os.path.join(self.messages_dir, msg.queue_id),
            size=msg.size,
            prefix=msg.prefix,
            params=msg.params,
            body=body,
        )
        rcpts = tuple(
            QueuedRecipient(row_id=row_id, address=address, original=original, dsn=dsn)
            for row_id, (address, original, dsn) in zip(row_ids, msg.recipients, strict=True)
        )
        self._fresh.append(Pending(message, rcpts, lease_until))
        self._fresh_ready.set()

    # ---- for the runner ----

    async def wait_fresh(self) -> list[Pending]:
        """Wait for newly committed messages and take them all (the runner's fast path)."""
        while not self._fresh:
            self._fresh_ready.clear()
            await self._fresh_ready.wait()
        out = list(self._fresh)
        self._fresh.clear()
        return out

    async def watch(self, wake: Callable[[], None], busy: Callable[[], bool]) -> None:
        """One node: every commit is handed over in memory, nothing else wakes the runner."""
        await asyncio.Event().wait()

    async def take_due(self, *, limit: int, exclude: Collection[int]) -> list[Pending]:
        """Lease and return due rows (at most `limit`), grouped by message."""
        now = self._clock.now()
        exclude = frozenset(exclude)
        return await self._write(
            lambda conn: store.take_due(
                conn,
                now=now,
                node_id=self.node_id,
                lease_until=now + self.lease_seconds,
                limit=limit,
                exclude=exclude,
                messages_dir=self.messages_dir,
            )
        )

    async def load_body(self, message: QueuedMessage) -> QueuedMessage:
        """`message` with its inline body, when it came without (`body` None, `body_path` "")."""
        if message.body is not None or message.body_path:
            return message
        queue_id = message.queue_id
        body = await self._write(lambda conn: store.load_body(conn, queue_id))
        return message if body is None else dataclasses.replace(message, body=body)

    def release(self, queue_id: str) -> None:
        """The runner is done with this message's attempt: its body no longer counts."""
        self._held_bytes -= self._held.pop(queue_id, 0)

    async def claim_delay_warning(self, queue_id: str) -> bool:
        """True once per message: the caller is to send its delay warning (see
        `sqlite.claim_delay_warning`)."""
        return await self._write(lambda conn: store.claim_delay_warning(conn, queue_id))

    async def next_due(self) -> float | None:
        return await self._write(store.next_due)

    async def record(
        self, queue_id: str, updates: Sequence[RowUpdate], *, has_file: bool = True
    ) -> bool:
        """Record one attempt's outcomes; True when the message is finished and removed.
        `has_file`: the body is a spool file (to unlink once the message is removed); False
        for a body stored inline in its row, which goes with the row."""
        now = self._clock.now()
        path = os.path.join(self.messages_dir, queue_id)

        def unlink_if_done(done: bool) -> None:
            if done and has_file:
                # After the commit: a crash in between leaves an orphan body, removed at open.
                # In the pool, not in the writer thread that every commit waits for.
                self._pool.submit(_unlink, path)

        done = await self._write(
            lambda conn: store.record_outcomes(conn, queue_id, updates, now),
            after_commit=unlink_if_done,
        )
        if done:
            log.info(logfmt("removed", id=queue_id))
        return done

    async def free_leases(self, owner: str, *, recovered: bool) -> int:
        """Free the queued rows leased to `owner` (see `QueueStore.free_leases`)."""
        now = self._clock.now()
        return await self._write(
            lambda conn: store.free_leases(conn, owner, recovered=recovered, now=now)
        )

    async def _write(
        self,
        run: Callable[[sqlite3.Connection], T],
        after_commit: Callable[[T], None] | None = None,
    ) -> T:
        self._check_open()
        future: asyncio.Future[T] = self._loop.create_future()
        self._track(future)
        self.writer.submit(Job(run=run, future=future, after_commit=after_commit))
        try:
            return await future
        except (OSError, sqlite3.Error, ValueError) as exc:
            raise _as_write_error(exc, "queue store") from exc

    # ---- shutdown ----

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the queue is closed")

    async def close(self) -> None:
        """Finish pending commits, then stop the threads and close the store."""
        if self._closed:
            return
        self._closed = True
        # Every commit settles once its body is sealed and its rows are written; after that
        # no job can reach the pool or the writer any more. Then the writer, then the pool
        # (it may still unlink bodies of messages the writer finished).
        if self._pending:
            await asyncio.wait(set(self._pending))
        await asyncio.to_thread(self.writer.stop)
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        self._conn.close()
        os.close(self._dir_fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning(logfmt("body-unlink-failed", path=path, error=exc.strerror))


def _fail(future: asyncio.Future[T], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def recover_offline(root: Path, now: float) -> list[str]:
    """`store.recover` with no Queue open: what a supervisor runs before starting workers."""
    os.makedirs(root / "messages", mode=0o700, exist_ok=True)
    conn = store.connect(str(root / "queue.db"))
    try:
        return store.recover(conn, str(root / "messages"), now=now)
    finally:
        conn.close()


def release_leases(root: Path, owner: str, now: float) -> int:
    """Free the rows a dead worker held (`owner` is its node id), marked recovered so the courier
    checks before delivering again (exactly once); returns how many."""
    conn = store.connect(str(root / "queue.db"))
    try:
        conn.execute("BEGIN IMMEDIATE")
        freed = store.free_leases(conn, owner, recovered=True, now=now)
        conn.execute("COMMIT")
        return freed
    finally:
        conn.close()
