"""The whole shared queue's figures, read on one plain (blocking) connection: what `hato status`
shows from any node, the server running or not. The same figures as `PgAdmin.stats`, which a
running node answers over its control socket.

Must not import anything of hato but model and this room.
"""

from __future__ import annotations

from typing import Any

import psycopg

from hato.model.queuestore import QueueStats

# The three statements behind QueueStats, shared with PgAdmin.stats (async, a running node).
MESSAGES_SQL = "SELECT count(*), min(received_at), coalesce(sum(size), 0) FROM queue_messages"
RECIPIENTS_SQL = (
    "SELECT count(*) FILTER (WHERE status = 'queued'),"
    " count(*) FILTER (WHERE status = 'queued' AND attempts > 0),"
    " count(*) FILTER (WHERE status = 'held'),"
    " count(*) FILTER (WHERE lease_until > %s)"
    " FROM queue_recipients WHERE status IN ('queued', 'held')"
)  # parameter: now
FINISHED_SQL = (
    "SELECT status, count(*) FROM queue_recipients"
    " WHERE status IN ('delivered', 'failed') AND updated_at > %s GROUP BY status"
)  # parameter: an hour ago


def stats_of(
    messages: tuple[Any, ...], recipients: tuple[Any, ...], finished: list[tuple[Any, ...]]
) -> QueueStats:
    """QueueStats from the rows of MESSAGES_SQL, RECIPIENTS_SQL and FINISHED_SQL."""
    count, oldest, size = messages
    queued, deferred, held, busy = recipients
    return QueueStats(
        messages=int(count),
        queued=int(queued),
        deferred=int(deferred),
        held=int(held),
        busy=int(busy),
        oldest=None if oldest is None else float(oldest),
        bytes=int(size),
        finished_last_hour={str(s): int(n) for s, n in finished},
    )


def totals(conn: psycopg.Connection[Any], now: float) -> QueueStats:
    messages = conn.execute(MESSAGES_SQL).fetchone()
    recipients = conn.execute(RECIPIENTS_SQL, (now,)).fetchone()
    assert messages is not None and recipients is not None
    finished = conn.execute(FINISHED_SQL, (now - 3600,)).fetchall()
    return stats_of(messages, recipients, finished)
