"""The PostgreSQL backend of `QueueStore` (queue/protocol.py), for several nodes on one database.

Must not import anything of hato but model and this room. Its operator statements are in
`postgres_admin.py`; the tables are made by `hato store migrate` (hato.pgstore.schema, 2).

Theory of operation (DESIGN.md: 250 means durable, exactly once).
- Receiving: the session streams the body into a `BodyWriter` (memory up to 64 KiB, then a
  scratch file in this node's private `messages_dir`). `commit()` joins a group commit: the
  first session to find no transaction running becomes the leader and writes every message
  waiting at that moment in ONE transaction (many sessions, one WAL flush), the others wait
  for it; with inline bodies only, that is the implicit transaction of one pipeline (no
  BEGIN or COMMIT, one round trip: `_insert`). A small body goes inline in its message row;
  a large one is read back from its scratch file 1 MiB at a time into `queue_body_chunks`
  rows (never whole in memory), then the scratch file is removed: the body is in the
  database, so any node can deliver it. The recipient rows are inserted leased to this node;
  `commit()` returns (and the session may say 250) only after PostgreSQL's commit returned
  (the COMMIT, or the pipeline's Sync), which is durable (synchronous_commit on).
  When this node's runner is busy (every delivery slot taken: `watch`'s `busy`), the rows
  are committed leased to nobody and the transaction says `NOTIFY hato_queue`: every other
  node's `watch` (postgres_listen.py) wakes its due scan, so an idle node takes the mail at
  once instead of it waiting here for a slot.
  Any failure is QueueWriteError: 451 4.3.0, never 250; nothing of the message stays.
  A copy stored in the clear on a kept "no key" (`unkeyed`) is checked against the `keys`
  table in the same transaction (a statement that fails it when a key is found,
  postgres_rows.py `refuse_keyed`): one of them keyed by then, it is refused (KeyAppeared,
  451 4.7.5) and the rest of the group committed without it.
- Delivering: the committed message is handed to this node's runner in memory (`wait_fresh`),
  so new mail goes out at once, not after a poll. Due rows are taken with
  `FOR UPDATE SKIP LOCKED` and leased to this node until now + `lease_seconds`; two nodes
  never take one row. A lease that runs out (its node died) makes the row due for any node,
  marked `recovered` so the courier checks before delivering again (the Maildir file name
  comes from the queue row: a redelivery overwrites the same name). A node that starts again
  frees its own old leases the same way. The due scan is one statement that also reads the
  messages and their inline bodies (up to DUE_BODIES a scan); `load_body` reads the rest
  (those past the budget in groups of BODY_GROUP, one statement each), and streams a chunked
  body into a scratch file that `release` removes.
- Recording: `record` joins a group as `commit` does (postgres_record.py): the outcomes of
  every attempt ending at one moment go in one transaction, one round trip.
- Every psycopg error becomes QueueError/QueueWriteError (a database that cannot be reached
  included): the session answers 451 4.3.0, the runner backs off, nothing is lost.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import random
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

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
from hato.model.queuestore import KeyAppeared, NewMessage, Pending, QueueError, RowUpdate
from hato.queue.body import BodyWriter, QueueWriteError
from hato.queue.commit import log_refused, sealed_message
from hato.queue.ids import QueueIdGenerator, Rng
from hato.queue.postgres_admin import PgAdmin
from hato.queue.postgres_listen import CHANNEL, Connect, Listener
from hato.queue.postgres_record import OutcomeWriter, write_outcomes
from hato.queue.postgres_rows import (
    MESSAGE_COLUMNS,
    OwnBodies,
    fresh_dir,
    insert_messages,
    key_refused,
    keys_among,
    message_from_row,
    recipient_from_row,
    refuse_keyed,
    row_ids,
    stream_body,
    unlink,
    write_error,
)
from hato.queue.store import HOLD_PARAM

log = logging.getLogger("hato.queue")

DEFAULT_LEASE = 900.0
DUE_BODIES = 4 * 1024 * 1024  # octets of inline bodies a due scan reads with its rows
# Inline bodies read in one statement by `load_body` for messages a scan took past its
# budget: at most 64 inline bodies (64 KiB each, queue/body.py) = DUE_BODIES in memory.
BODY_GROUP = 64
AsyncPool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


@dataclasses.dataclass(slots=True)
class _Waiting:
    msg: NewMessage
    body: BodyWriter
    future: asyncio.Future[tuple[bool, tuple[int, ...]]]  # (leased here, row ids)
    unkeyed: frozenset[str]  # must have no key at the commit (protocol.py)


class PgQueue(PgAdmin):
    """Open with `await PgQueue.open(pool, ...)`."""

    def __init__(
        self,
        pool: AsyncPool,
        *,
        scratch: Path,
        clock: Clock,
        node_id: str,
        rng: Rng,
        lease_seconds: float,
        min_free: int,
        free_space: Callable[[Path], int],
        id_slot: int,
        close_pool: bool = False,
        listen: Connect | None = None,
    ) -> None:
        super().__init__(pool, clock)
        self._close_pool = close_pool
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.messages_dir = str(scratch)
        self.problems: tuple[str, ...] = ()
        self._scratch = scratch
        self._ids = QueueIdGenerator(clock, random.Random(rng.getrandbits(64)), id_slot)
        self._min_free = min_free
        self._free_space = free_space
        self._batch: list[_Waiting] = []
        self._commit_lock = asyncio.Lock()
        self._fresh: collections.deque[Pending] = collections.deque()
        self._fresh_ready = asyncio.Event()
        self._closed = False
        # LISTEN hato_queue, run by `watch`
        self.listener = (
            None if listen is None else Listener(listen, node_id, self._woken, self._reslot)
        )
        self._wake: Callable[[], None] | None = None  # `watch`'s: this node's due scan
        self._busy: Callable[[], bool] = lambda: False  # `watch`'s: no free delivery slot
        self._unrecorded: dict[str, list[RowUpdate]] = {}  # outcomes `record` could not write
        self._outcomes = OutcomeWriter(pool, clock)  # `record`'s group writer
        # Messages whose body could not be read (the database down): nothing was attempted, so
        # their rows' leases are given back at the next scan, not held for the lease time.
        self._unread: set[str] = set()
        self._streamed: set[str] = set()  # bodies `load_body` streamed into scratch files
        # Messages a due scan took without their inline body (past DUE_BODIES), and the
        # bodies read for them ahead of their own `load_body` (`_kept_body`); both emptied
        # by `release`.
        self._bodiless: dict[str, None] = {}
        self._kept: dict[str, bytes] = {}
        self._own = OwnBodies(DUE_BODIES)  # committed unleased: not read back by the scan

    @classmethod
    async def open(
        cls,
        pool: AsyncPool,
        *,
        scratch: Path,
        clock: Clock,
        node_id: str,
        rng: Rng | None = None,
        lease_seconds: float = DEFAULT_LEASE,
        min_free: int = 0,
        free_space: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        recover: bool = True,
        id_slot: int = 0,
        close_pool: bool = False,
        listen: Connect | None = None,
    ) -> PgQueue:
        """`scratch`: this node's private directory for body files (emptied here).
        `recover`: free this node's leases of an earlier life, marked recovered.
        `close_pool`: `close()` closes the pool too (else it is the caller's).
        `listen`: makes the dedicated connection `watch` listens on (None: `watch` only
        hears this node's own wake-ups)."""
        await asyncio.to_thread(fresh_dir, scratch)
        queue = cls(
            pool,
            scratch=scratch,
            clock=clock,
            node_id=node_id,
            rng=rng if rng is not None else random.SystemRandom(),
            lease_seconds=lease_seconds,
            min_free=min_free,
            free_space=free_space,
            id_slot=id_slot,
            close_pool=close_pool,
            listen=listen,
        )
        if queue.listener is not None:
            try:  # an id slot of this process's own among all nodes' (postgres_listen.py)
                await queue.listener.open(id_slot)
            except psycopg.Error as exc:
                raise write_error(exc, "listen") from exc
        if recover:
            freed = await queue.free_leases(node_id, recovered=True)
            if freed:
                log.info(logfmt("recovered", rows=freed))
        return queue

    # ---- receiving ----

    def has_room(self, size_hint: int = 0) -> bool:
        """Room in the scratch directory for a body of `size_hint` (RFC 1870 SIZE=)."""
        try:
            return self._free_space(self._scratch) >= self._min_free + 2 * max(size_hint, 0)
        except OSError:
            return False

    def new_body(self) -> BodyWriter:
        if self._closed:
            raise RuntimeError("the queue is closed")
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
        msg = sealed_message(
            body,
            mail_from=mail_from,
            recipients=recipients,
            prefix=prefix,
            params=params,
            clock=self._clock,
        )
        future = asyncio.get_running_loop().create_future()
        waiting = _Waiting(msg, body, future, frozenset(unkeyed))
        self._batch.append(waiting)
        async with self._commit_lock:  # group commit: the first waiter writes the batch
            if not waiting.future.done():
                batch, self._batch = self._batch, []
                await self._write_batch(batch)
        try:
            mine, row_ids = waiting.future.result()
        except KeyAppeared:
            raise  # nothing stored; a body file stays the caller's, to seal (protocol.py)
        except QueueWriteError as error:
            log_refused(msg.queue_id, error)
            body.discard()
            raise
        body.discard()  # the scratch file: the body is in the database
        self._queued(msg, row_ids, mine)
        return msg.queue_id

    async def _write_batch(self, batch: list[_Waiting]) -> None:
        # Leased here and handed over in memory, unless this node's runner has no free slot:
        # then leased to nobody, and the other nodes told.
        mine = not self._busy()
        unkeyed = {a for item in batch for a in item.unkeyed}
        found: frozenset[str] = frozenset()
        try:
            async with self._pool.connection() as conn:
                try:
                    results = await self._insert(conn, batch, mine=mine, unkeyed=unkeyed)
                except psycopg.Error as exc:
                    if not key_refused(exc):
                        raise
                    # Rolled back: which mailboxes have a key now (one read, rare).
                    found = await keys_among(conn, unkeyed)
                    if not found:  # removed again meanwhile: the client tries again
                        raise QueueWriteError(None, "commit: a key came and went") from None
                    raise KeyAppeared(
                        None, f"a key was imported for {', '.join(sorted(found))}"
                    ) from None
        except KeyAppeared as appeared:  # rolled back: the others go again, without these
            for item in batch:
                if item.unkeyed & found:
                    item.future.set_exception(appeared)
            if rest := [item for item in batch if not item.unkeyed & found]:
                await self._write_batch(rest)
            return
        except (psycopg.Error, OSError, QueueError) as exc:
            error = write_error(exc, "commit")
            for item in batch:
                item.future.set_exception(error)
            return
        for item, ids in zip(batch, results, strict=True):
            item.future.set_result((mine, ids))
        if not mine and self._wake is not None:
            self._wake()  # this node's own due scan too, once a slot is free

    async def _insert(
        self,
        conn: psycopg.AsyncConnection[Any],
        batch: list[_Waiting],
        *,
        mine: bool,
        unkeyed: set[str],
    ) -> list[tuple[int, ...]]:
        """The group's rows, each message's row ids. With inline bodies only: pipeline mode,
        whose statements up to its Sync are one implicit transaction (PostgreSQL's protocol,
        "Pipelining"), committed at the Sync or rolled back whole by an error in any: one
        round trip and no BEGIN or COMMIT (psycopg's transaction() syncs after its BEGIN and
        again at its COMMIT). A chunked body's rows are sent one at a time, so that no more
        than a chunk waits in memory: an explicit transaction. Raises psycopg's errors
        (`key_refused` for a key found, nothing written)."""
        inline = all(item.msg.body is not None for item in batch)
        async with conn.pipeline() if inline else conn.transaction():
            inserted = await insert_messages(
                conn,
                [(item.msg, item.body, HOLD_PARAM in item.msg.params) for item in batch],
                node_id=self.node_id if mine else None,
                lease_seconds=self.lease_seconds,
            )
            # Last, so that its snapshot is the newest: a key committed before it is seen.
            await refuse_keyed(conn, unkeyed)
            if not mine:  # delivered at COMMIT only
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node_id))
        # Read once the pipeline's Sync came back: no flush of its own.
        return await row_ids(inserted, [item.msg for item in batch])

    def _queued(self, msg: NewMessage, row_ids: tuple[int, ...], mine: bool) -> None:
        log.info(
            logfmt(
                "queued",
                id=msg.queue_id,
                size=msg.size,
                nrcpt=len(row_ids),
                **{"from": format_path(msg.mail_from)},
            )
        )
        message = QueuedMessage(
            queue_id=msg.queue_id,
            mail_from=msg.mail_from,
            received_at=msg.received_at,
            body_path="",
            size=msg.size,
            prefix=msg.prefix,
            params=msg.params,
            body=msg.body,  # None for a chunked body: `load_body` streams it
        )
        rcpts = tuple(
            QueuedRecipient(row_id=row_id, address=address, original=original, dsn=dsn)
            for row_id, (address, original, dsn) in zip(row_ids, msg.recipients, strict=True)
        )
        if HOLD_PARAM in msg.params or not mine:
            # Committed held (a milter's quarantine): not delivered until released. Leased to
            # nobody (this runner busy): for whichever node's due scan takes it first; if
            # it is this node's, its body is here already.
            if HOLD_PARAM not in msg.params and msg.body is not None:
                self._own.keep(msg.queue_id, msg.body)
            return
        self._fresh.append(Pending(message, rcpts, msg.received_at + self.lease_seconds))
        self._fresh_ready.set()

    # ---- the runner ----

    async def wait_fresh(self) -> list[Pending]:
        while not self._fresh:
            self._fresh_ready.clear()
            await self._fresh_ready.wait()
        out = list(self._fresh)
        self._fresh.clear()
        return out

    async def watch(self, wake: Callable[[], None], busy: Callable[[], bool]) -> None:
        """Call `wake` when another node made rows due (LISTEN hato_queue on a dedicated
        connection, reconnecting with backoff), or this one committed rows it does not take
        itself (while `busy()`); until cancelled."""
        self._wake, self._busy = wake, busy
        try:
            if self.listener is None:
                await asyncio.Event().wait()  # only this node's own wake-ups
            else:
                await self.listener.run()
        finally:
            self._wake, self._busy = None, lambda: False

    def _reslot(self, slot: int) -> None:
        self._ids.slot = slot

    def _woken(self) -> None:
        if self._wake is not None:
            self._wake()

    async def take_due(self, *, limit: int, exclude: Collection[int]) -> list[Pending]:
        await self._record_kept()
        await self._unlease_unread(exclude)
        now = self._clock.now()
        until = now + self.lease_seconds
        # A row whose lease ran out was perhaps delivered by the node that held it: recovered.
        # One statement: the rows leased, and their messages read with them, inline bodies
        # included up to DUE_BODIES octets (once per message; the others: `load_body`), but
        # for those this node keeps (`_own`).
        own = self._own.ids()
        message_columns = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(",")[1:])
        rows = await self._run(
            "WITH due AS (SELECT row_id FROM queue_recipients WHERE status = 'queued'"
            " AND next_attempt <= %(now)s AND (lease_until IS NULL OR lease_until <= %(now)s)"
            " AND NOT (row_id = ANY(%(exclude)s)) ORDER BY next_attempt, row_id"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " taken AS (UPDATE queue_recipients r SET lease_owner = %(node)s,"
            " lease_until = %(until)s, recovered = r.recovered OR r.lease_owner IS NOT NULL"
            " FROM due WHERE r.row_id = due.row_id RETURNING r.queue_id, r.row_id, r.address,"
            " r.original, r.attempts, r.recovered, r.notify, r.orcpt),"
            f" joined AS (SELECT t.*, {message_columns}, m.body IS NULL AS chunked,"
            " CASE WHEN own.id IS NULL THEN m.body END AS body,"
            " row_number() OVER (PARTITION BY t.queue_id ORDER BY t.row_id) = 1 AS first"
            " FROM taken t JOIN queue_messages m ON m.queue_id = t.queue_id"
            # A join (hashed), not `= ANY` (a linear search a row once the plan is generic).
            " LEFT JOIN unnest(%(own)s::text[]) AS own(id) ON own.id = t.queue_id)"
            # Not `*`: the body column once, in the CASE, within the budget.
            " SELECT queue_id, row_id, address, original, attempts, recovered, notify, orcpt,"
            f" {MESSAGE_COLUMNS}, chunked, CASE WHEN first AND sum(CASE WHEN first THEN"
            " coalesce(octet_length(body), 0) ELSE 0 END) OVER (ORDER BY row_id)"
            " <= %(budget)s THEN body END FROM joined",
            {
                "now": now,
                "until": until,
                "node": self.node_id,
                "limit": limit,
                "exclude": list(exclude),
                "budget": DUE_BODIES,
                "own": own,
            },
            binary=True,  # the bodies as their octets: no hex to write, send and decode
        )
        by_message: dict[str, list[QueuedRecipient]] = {}
        messages: dict[str, QueuedMessage] = {}
        for row in sorted(rows, key=lambda r: int(r[1])):
            by_message.setdefault(row[0], []).append(recipient_from_row(row[1:8]))
            if row[0] not in messages:
                kept = self._own.take(row[0])
                body = kept if row[-1] is None else bytes(row[-1])
                if body is None and not row[-2]:  # inline, past the budget: `load_body`
                    self._bodiless[row[0]] = None
                messages[row[0]] = dataclasses.replace(message_from_row(row[8:14]), body=body)
        return [Pending(messages[qid], tuple(rcpts), until) for qid, rcpts in by_message.items()]

    async def next_due(self) -> float | None:
        (row,) = await self._run(
            "SELECT min(greatest(next_attempt, coalesce(lease_until, 0)))"
            " FROM queue_recipients WHERE status = 'queued'",
            (),
        )
        return None if row[0] is None else float(row[0])

    async def _unlease_unread(self, exclude: Collection[int]) -> None:
        """Give back this node's leases on the messages `load_body` could not read (rows in
        flight here, `exclude`, keep theirs); raises as `_run`."""
        if not self._unread:
            return
        unread, busy = list(self._unread), list(exclude)
        await self._run(
            "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL"
            " WHERE queue_id = ANY(%s) AND lease_owner = %s AND status = 'queued'"
            " AND NOT (row_id = ANY(%s))",
            (unread, self.node_id, busy),
        )
        still = await self._run(
            "SELECT DISTINCT queue_id FROM queue_recipients"
            " WHERE queue_id = ANY(%s) AND row_id = ANY(%s)",
            (unread, busy),
        )
        self._unread.difference_update(set(unread) - {qid for (qid,) in still})

    async def load_body(self, message: QueuedMessage) -> QueuedMessage:
        """An inline body into memory; a chunked one streamed into a scratch file. When the
        database cannot be read, QueueWriteError, and the rows are given back at the next
        scan (`_unlease_unread`) instead of waiting out their lease."""
        try:
            return await self._load_body(message)
        except QueueWriteError:
            self._unread.add(message.queue_id)
            raise

    async def _load_body(self, message: QueuedMessage) -> QueuedMessage:
        if message.body is not None or message.body_path:
            return message
        if (body := await self._kept_body(message.queue_id)) is not None:
            return dataclasses.replace(message, body=body)
        (row,) = await self._run(
            "SELECT body, body IS NULL FROM queue_messages WHERE queue_id = %s",
            (message.queue_id,),
            binary=True,
        ) or [(None, False)]
        if row[0] is not None:
            return dataclasses.replace(message, body=bytes(row[0]))
        if not row[1]:
            return message  # the message is gone
        path = os.path.join(self.messages_dir, message.queue_id)
        self._streamed.add(message.queue_id)
        await stream_body(self._pool, message.queue_id, path)
        return dataclasses.replace(message, body_path=path)

    async def _kept_body(self, queue_id: str) -> bytes | None:
        """An inline body a due scan left out (past its budget), read with the next ones so
        left (up to BODY_GROUP: one statement for them, not one each) and kept until their
        own `load_body`; None when there is none (then the single read)."""
        if queue_id in self._kept:
            self._bodiless.pop(queue_id, None)
            return self._kept.pop(queue_id)
        if queue_id not in self._bodiless:
            return None
        group = [queue_id, *itertools.islice((q for q in self._bodiless if q != queue_id),
                                             BODY_GROUP - 1)]  # fmt: skip
        rows = await self._run(
            "SELECT queue_id, body FROM queue_messages WHERE queue_id = ANY(%b)"
            " AND body IS NOT NULL",
            (group,),
            binary=True,
        )
        for qid in group:
            self._bodiless.pop(qid, None)
        bodies = {str(qid): bytes(body) for qid, body in rows}
        mine = bodies.pop(queue_id, None)
        self._kept.update(bodies)
        return mine

    def release(self, queue_id: str) -> None:
        self._bodiless.pop(queue_id, None)
        self._own.take(queue_id)
        self._kept.pop(queue_id, None)
        # Only a body streamed into a file has one to remove: no unlink, a system call on
        # the event loop, for every message whose body was inline (most).
        if queue_id in self._streamed:
            self._streamed.discard(queue_id)
            unlink(os.path.join(self.messages_dir, queue_id))

    async def record(
        self, queue_id: str, updates: Sequence[RowUpdate], *, has_file: bool = True
    ) -> bool:
        """`has_file` is the SQLite store's concern: here a body goes with its rows. Grouped
        with the other attempts ending now (postgres_record.py: one transaction)."""
        try:
            done = await self._outcomes.record(queue_id, updates)
        except QueueWriteError:
            # Kept, and written by the next scan once the database answers again (so a
            # message delivered while it was down is not delivered again after the lease).
            self._unrecorded[queue_id] = [*self._unrecorded.get(queue_id, []), *updates]
            raise
        if done:
            log.info(logfmt("removed", id=queue_id))
        return done

    async def _record_kept(self) -> None:
        """Write the outcomes `record` could not write (see there), in one transaction;
        raises as `record`."""
        if not self._unrecorded:
            return
        kept = dict(self._unrecorded)
        try:
            done = await write_outcomes(self._pool, list(kept.items()), self._clock.now())
        except psycopg.Error as exc:
            raise write_error(exc, "record") from exc
        for queue_id, updates in kept.items():
            if self._unrecorded.get(queue_id) is updates:
                del self._unrecorded[queue_id]
            log.info(logfmt("record-retried", id=queue_id, rows=len(updates)))
            if queue_id in done:
                log.info(logfmt("removed", id=queue_id))

    async def close(self) -> None:
        """Commits in flight finish (they hold the commit lock); the pool is the caller's."""
        if self._closed:
            return
        self._closed = True
        async with self._commit_lock:
            pass
        if self.listener is not None:
            await self.listener.close()  # if `watch` never ran
        if self._close_pool:
            await self._pool.close()
        await asyncio.to_thread(shutil.rmtree, self._scratch, True)
