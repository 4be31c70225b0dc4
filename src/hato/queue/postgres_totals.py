"""The whole shared queue's figures, read on one plain (blocking) connection: what `hato status`
shows from any node, the server running or not. The same figures as `PgAdmin.stats`, which a
running node answers over its control socket.

Must not import anything of hato but model and this room.
"""

from __future__ import annotations

from typing import Any

import psycopg

from hato.model.queuestore import QueueStats


def totals(conn: psycopg.Connection[Any], now: float) -> QueueStats:
    row = conn.execute(
        "SELECT count(*), min(received_at), coalesce(sum(size), 0) FROM queue_messages"
    ).fetchone()
    assert row is not None
    messages, oldest, size = row
    rcpts = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'queued'),"
        " count(*) FILTER (WHERE status = 'queued' AND attempts > 0),"
        " count(*) FILTER (WHERE status = 'held'),"
        " count(*) FILTER (WHERE lease_until > %s)"
        " FROM queue_recipients WHERE status IN ('queued', 'held')",
        (now,),
    ).fetchone()
    assert rcpts is not None
    queued, deferred, held, busy = rcpts
    finished = conn.execute(
        "SELECT status, count(*) FROM queue_recipients"
        " WHERE status IN ('delivered', 'failed') AND updated_at > %s GROUP BY status",
        (now - 3600,),
    ).fetchall()
    return QueueStats(
        messages=int(messages),
        queued=int(queued),
        deferred=int(deferred),
        held=int(held),
        busy=int(busy),
        oldest=None if oldest is None else float(oldest),
        bytes=int(size),
        finished_last_hour={str(s): int(n) for s, n in finished},
    )
