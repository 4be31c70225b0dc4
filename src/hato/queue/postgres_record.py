"""The PostgreSQL queue's delivery outcomes, recorded in groups (issue 16).

Must not import anything of hato but model and this room.

Theory of operation: as `PgQueue.commit` groups the messages of every session committing at
one moment, `OutcomeWriter.record` groups the outcomes of every attempt that ends at one
moment: the first attempt to find no write running becomes the leader, lets the attempts
ready to run on the event loop join (one turn of the loop: the rest of a runner's batch
whose courier answered together), and writes all of them in ONE transaction, pipelined
(one UPDATE of every row from arrays, one DELETE of the messages left with no row to try,
their rows and body chunks going with them by ON DELETE CASCADE: one round trip and one WAL
flush for the group instead of a transaction per attempt). The attempts ending while it
writes wait, and form the next group.

No guarantee moves: an attempt's outcomes are recorded only once its courier returned, and a
node that dies before the group's COMMIT leaves the rows leased to it; once the lease runs
out any node takes them again, marked recovered, and the courier writes the same Maildir
name (from the queue row) again: a redelivery that overwrites, never a loss. A failed write
fails every attempt of the group with the same QueueWriteError (PgQueue keeps their
outcomes for the next scan).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from hato.model import Clock
from hato.model.queuestore import RowUpdate
from hato.queue.body import QueueWriteError
from hato.queue.postgres_rows import write_error

AsyncPool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]

# The arrays in binary (%b), as the commit's (postgres_rows.py `_unnest`).
_UPDATE = (
    "UPDATE queue_recipients r SET status = u.status, attempts = u.attempts,"
    " next_attempt = u.next_attempt, last_reply = u.last_reply, recovered = u.recovered,"
    " lease_owner = NULL, lease_until = NULL, updated_at = %s"
    " FROM unnest(%b::bigint[], %b::text[], %b::integer[], %b::double precision[],"
    " %b::text[], %b::boolean[]) AS u(row_id, status, attempts, next_attempt, last_reply,"
    " recovered) WHERE r.row_id = u.row_id"
)
# A message is finished once none of its rows is queued or held (its rows and chunks cascade).
_FINISH = (
    "DELETE FROM queue_messages m WHERE m.queue_id = ANY(%b) AND NOT EXISTS (SELECT 1 FROM"
    " queue_recipients r WHERE r.queue_id = m.queue_id AND r.status IN ('queued', 'held'))"
    " RETURNING m.queue_id"
)


async def write_outcomes(
    pool: AsyncPool, outcomes: Sequence[tuple[str, Sequence[RowUpdate]]], now: float
) -> set[str]:
    """Record the outcomes of several attempts (queue id, its rows' updates) in one
    transaction, freeing their leases; the queue ids of the messages finished and removed.
    Raises psycopg's errors."""
    last = {u.row_id: u for _, us in outcomes for u in us}  # a row once: its latest outcome
    updates = [last[row_id] for row_id in sorted(last)]
    queue_ids = sorted({queue_id for queue_id, _ in outcomes})
    # One implicit transaction (PostgreSQL's protocol, "Pipelining": the statements before a
    # Sync run as one, committed at the Sync, or all rolled back by an error in any), one
    # round trip: no BEGIN and COMMIT of their own, and none of psycopg's transaction()
    # machinery, which syncs after its BEGIN and again at its COMMIT. The DELETE, a statement
    # of its own, sees the UPDATE's new statuses (a data-modifying WITH would not).
    async with pool.connection() as conn:
        async with conn.pipeline():
            await conn.execute(
                _UPDATE,
                (
                    now,
                    [u.row_id for u in updates],
                    [u.status.value for u in updates],
                    [u.attempts for u in updates],
                    [u.next_attempt for u in updates],
                    [u.last_reply for u in updates],
                    [u.recovered for u in updates],
                ),
            )
            cursor = await conn.execute(_FINISH, (queue_ids,))
        rows = await cursor.fetchall()  # read at the pipeline's Sync: no flush of its own
    return {str(queue_id) for (queue_id,) in rows}


@dataclasses.dataclass(slots=True)
class _Attempt:
    queue_id: str
    updates: Sequence[RowUpdate]
    future: asyncio.Future[bool]  # the message finished and removed


class OutcomeWriter:
    """The group writer of `PgQueue.record` (see the module docstring)."""

    def __init__(self, pool: AsyncPool, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock
        self._waiting: list[_Attempt] = []
        self._lock = asyncio.Lock()

    async def record(self, queue_id: str, updates: Sequence[RowUpdate]) -> bool:
        """Record one attempt's outcomes with the others ending now; True when its message
        is finished and removed. Raises QueueWriteError (nothing of the group recorded)."""
        attempt = _Attempt(queue_id, updates, asyncio.get_running_loop().create_future())
        self._waiting.append(attempt)
        async with self._lock:
            if not attempt.future.done():
                await asyncio.sleep(0)  # one turn of the loop: the attempts ready now join
                group, self._waiting = self._waiting, []
                await self._write(group)
        return attempt.future.result()

    async def _write(self, group: list[_Attempt]) -> None:
        try:
            done = await write_outcomes(
                self._pool, [(a.queue_id, a.updates) for a in group], self._clock.now()
            )
        except psycopg.Error as exc:
            error = write_error(exc, "record")
            for attempt in group:
                attempt.future.set_exception(error)
            return
        except BaseException:
            # Cancelled (the node stopping) mid-write: the waiters must not wait for ever;
            # whether the COMMIT happened is unknown, so their rows stay as the lease says.
            for attempt in group:
                if not attempt.future.done():
                    attempt.future.set_exception(QueueWriteError(None, "record: cancelled"))
            raise
        finished: set[str] = set()
        for attempt in reversed(group):  # a message's removal is told once, to its last
            attempt.future.set_result(attempt.queue_id in done - finished)
            if attempt.queue_id in done:
                finished.add(attempt.queue_id)
