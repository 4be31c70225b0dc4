"""The operator's statements on the PostgreSQL queue: list, show, hold, release, flush, delete,
the two halves of a bounce, and the figures of `hato status` and the metrics.

Must not import anything of hato but model and this room.

Several nodes share the queue, so a lease is always live: a row leased until a time still to
come is being delivered by some node right now and is left alone, counted as `busy`
(DESIGN.md, exactly once). Each operation runs in one transaction with the selected rows
locked (`FOR UPDATE`), so it never races a node's `record` or `take_due`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from hato.model import Clock, logfmt
from hato.model.queuestore import (
    ADMIN_BOUNCE,
    BODY_MISSING,
    ActionResult,
    AdminAction,
    BounceDone,
    MessageDetail,
    QueueStats,
    QueueWriteError,
    Returned,
    RowView,
    Selector,
)
from hato.queue.postgres_rows import message_from_row, recipient_from_row
from hato.queue.postgres_totals import FINISHED_SQL, MESSAGES_SQL, RECIPIENTS_SQL, stats_of
from hato.queue.protocol import LogSink
from hato.queue.selector_sql import row_views, select_rows

HEADER_LIMIT = 64 * 1024  # octets of a body read to find its header section
Conn = psycopg.AsyncConnection[Any]


async def _rows(
    conn: Conn, selector: Selector, now: float, extra: str = "", lock: bool = False
) -> list[RowView]:
    sql, args = select_rows(
        selector,
        recipients="queue_recipients",
        messages="queue_messages",
        placeholder="%s",
        extra=extra,
    )
    cursor = await conn.execute(sql + (" FOR UPDATE OF r" if lock else ""), args)
    return row_views(await cursor.fetchall(), now=now, live=True)


async def finish_if_done(conn: Conn, queue_id: str) -> bool:
    """Delete the message (its rows and body chunks go with it) once no row is left to try."""
    cursor = await conn.execute(
        "DELETE FROM queue_messages WHERE queue_id = %s AND NOT EXISTS (SELECT 1 FROM"
        " queue_recipients WHERE queue_id = %s AND status IN ('queued', 'held'))"
        " RETURNING 1",
        (queue_id, queue_id),
    )
    return await cursor.fetchone() is not None


class PgAdmin:
    """The operator's half of `PgQueue` (its base class)."""

    def __init__(self, pool: AsyncConnectionPool[Conn], clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    async def claim_delay_warning(self, queue_id: str) -> bool:
        rows = await self._run(
            "UPDATE queue_messages SET delay_warned = true"
            " WHERE queue_id = %s AND NOT delay_warned RETURNING 1",
            (queue_id,),
        )
        return bool(rows)

    async def free_leases(self, owner: str, *, recovered: bool) -> int:
        rows = await self._run(
            "UPDATE queue_recipients SET recovered = recovered OR %s, lease_owner = NULL,"
            " lease_until = NULL, updated_at = %s"
            " WHERE status = 'queued' AND lease_owner = %s RETURNING 1",
            (recovered, self._clock.now(), owner),
        )
        return len(rows)

    async def _run(
        self, sql: str, params: Sequence[object] | dict[str, object], *, binary: bool = False
    ) -> list[Any]:
        """One statement in its own transaction; its rows (none for a statement without).
        `binary`: the rows in PostgreSQL's binary format (a bytea as its octets, not hex)."""
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, params, binary=binary)
                return await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            # QueueWriteError (a QueueError): the runner's scan backs off on it.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise QueueWriteError(None, f"queue store: {first}") from exc

    async def admin_list(self, selector: Selector, *, now: float) -> list[RowView]:
        async with self._pool.connection() as conn:
            return await _rows(conn, selector, now, " AND r.status IN ('queued', 'held')")

    async def admin_show(self, queue_id: str, *, now: float) -> MessageDetail | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT mail_from, received_at, size, prefix, params, coalesce(substring(body"
                " FROM 1 FOR %s), (SELECT substring(data FROM 1 FOR %s) FROM queue_body_chunks"
                " c WHERE c.queue_id = m.queue_id AND seq = 0)), body IS NOT NULL"
                " FROM queue_messages m WHERE queue_id = %s",
                (HEADER_LIMIT, HEADER_LIMIT, queue_id),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            sender, received, size, prefix, params, head, inline = row
            head = bytes(head or b"")
            header_end = head.find(b"\r\n\r\n")
            section = head[: header_end + 2] if header_end >= 0 else head
            return MessageDetail(
                queue_id=queue_id,
                sender=sender,
                received_at=received,
                size=size,
                params=json.loads(params),
                body="inline" if inline else "database (chunks)",
                headers=(bytes(prefix) + section).decode("utf-8", "replace"),
                recipients=tuple(await _rows(conn, Selector(queue_id=queue_id), now)),
            )

    async def admin_apply(
        self, action: AdminAction, selector: Selector, *, now: float, log: LogSink
    ) -> ActionResult:
        wanted: tuple[str, ...] = ("queued", "held")
        if action is AdminAction.RELEASE:
            wanted = ("held",)
        elif action in (AdminAction.HOLD, AdminAction.FLUSH):
            wanted = ("queued",)
        elif action is AdminAction.BOUNCE:
            # BOUNCE queues a DSN, which needs the queue's commit path (queue/admin.py).
            raise ValueError(f"{action.value}: not a row-only action")
        async with self._pool.connection() as conn, conn.transaction():
            rows = [r for r in await _rows(conn, selector, now, lock=True) if r.status in wanted]
            busy = [r for r in rows if r.busy]
            rows = [r for r in rows if not r.busy]
            skipped = []
            if action is AdminAction.RELEASE:
                # A body in the database cannot go missing; kept for rows copied from SQLite.
                missing = sorted({r.queue_id for r in rows if r.last_reply == BODY_MISSING})
                skipped = [f"{q}: body file still missing, left held" for q in missing]
                rows = [r for r in rows if r.queue_id not in missing]
            ids = [r.row_id for r in rows]
            if action is AdminAction.HOLD:
                sql = "UPDATE queue_recipients SET status = 'held', updated_at = %s"
                args: list[object] = [now]
            elif action is AdminAction.DELETE:
                sql, args = "DELETE FROM queue_recipients WHERE true", []
            else:  # RELEASE, FLUSH (Postfix's `postqueue -i/-f`): due now
                sql = "UPDATE queue_recipients SET status = 'queued', next_attempt = %s,"
                sql += " updated_at = %s"
                args = [now, now]
            if ids:
                if not sql.startswith("DELETE"):
                    sql += " WHERE true"
                await conn.execute(sql + " AND row_id = ANY(%s)", [*args, ids])
            touched = tuple(dict.fromkeys(r.queue_id for r in rows))
            removed = tuple([q for q in touched if await finish_if_done(conn, q)])
            if ids and action in (AdminAction.RELEASE, AdminAction.FLUSH):
                # Due now: every node's runner wakes (postgres_listen.py), at COMMIT only.
                await conn.execute("SELECT pg_notify('hato_queue', '')")
        for r in rows:
            log(logfmt(f"admin-{action.value}", id=r.queue_id, to=f"<{r.recipient}>"))
        return ActionResult(
            action.value, len(rows), touched, len(busy), removed=removed, skipped=tuple(skipped)
        )

    async def claim_for_bounce(
        self, selector: Selector, *, now: float, owner: str, until: float
    ) -> tuple[list[Returned], int]:
        async with self._pool.connection() as conn, conn.transaction():
            rows = await _rows(conn, selector, now, lock=True)
            rows = [r for r in rows if r.status in ("queued", "held")]
            ids = [r.row_id for r in rows if not r.busy]
            cursor = await conn.execute(
                "UPDATE queue_recipients SET lease_owner = %s, lease_until = %s"
                " WHERE row_id = ANY(%s) RETURNING queue_id, row_id, address, original,"
                " attempts, recovered, notify, orcpt",
                (owner, until, ids),
            )
            by_message: dict[str, list[Any]] = {}
            for qid, *rest in sorted(await cursor.fetchall(), key=lambda r: int(r[1])):
                by_message.setdefault(qid, []).append(recipient_from_row(rest))
            out = []
            for qid, recipients in by_message.items():
                cursor = await conn.execute(
                    "SELECT queue_id, mail_from, received_at, size, prefix, params, body"
                    " FROM queue_messages WHERE queue_id = %s",
                    (qid,),
                )
                row = await cursor.fetchone()
                assert row is not None
                message = message_from_row(row)
                if row[6] is not None:  # inline: read in the same snapshot as the claim
                    message = dataclasses.replace(message, body=bytes(row[6]))
                out.append(Returned(message, tuple(recipients)))
        return out, len(rows) - len(ids)

    async def finish_bounce(
        self,
        returned: Sequence[Returned],
        kept: Sequence[Returned],
        *,
        now: float,
        owner: str,
        log: LogSink,
    ) -> BounceDone:
        failed = 0
        async with self._pool.connection() as conn, conn.transaction():
            for item in returned:
                for rcpt in item.recipients:
                    cursor = await conn.execute(
                        "UPDATE queue_recipients SET status = 'failed', last_reply = %s,"
                        " updated_at = %s, lease_owner = NULL, lease_until = NULL"
                        " WHERE row_id = %s AND lease_owner = %s",
                        (str(ADMIN_BOUNCE), now, rcpt.row_id, owner),
                    )
                    if cursor.rowcount:
                        failed += 1
                        log(
                            logfmt("admin-bounce", id=item.message.queue_id, to=f"<{rcpt.address}>")
                        )
            kept_ids = [r.row_id for item in kept for r in item.recipients]
            await conn.execute(
                "UPDATE queue_recipients SET lease_owner = NULL, lease_until = NULL"
                " WHERE row_id = ANY(%s) AND lease_owner = %s",
                (kept_ids, owner),
            )
            touched = tuple(item.message.queue_id for item in returned)
            removed = tuple([q for q in touched if await finish_if_done(conn, q)])
        return BounceDone(failed, touched, removed)

    async def stats(self, *, now: float) -> QueueStats:
        (messages,) = await self._run(MESSAGES_SQL, ())
        (recipients,) = await self._run(RECIPIENTS_SQL, (now,))
        finished = await self._run(FINISHED_SQL, (now - 3600,))
        return stats_of(messages, recipients, finished)
