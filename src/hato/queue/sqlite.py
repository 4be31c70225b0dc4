"""The queue's tables in SQLite, and the statements the writer thread runs on them.

Must not import anything of hato but model. Every function here runs in the writer thread
(or, at open, before it starts), inside a transaction the caller owns.

One row per recipient (DESIGN.md: exactly once): its status, attempts, next attempt, last
reply and lease. A row is taken for delivery by setting a lease (owner, until); a lease
that ran out belongs to nobody, so a node that died gives its rows back by itself.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Collection, Sequence

from hato.model import (
    Address,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    format_path,
    logfmt,
)
from hato.model import parse_path as _parse_path
from hato.model.queuestore import BODY_MISSING, NewMessage, Pending, RowUpdate, Status

__all__ = ["NewMessage", "Pending", "RowUpdate", "Status"]

log = logging.getLogger("hato.queue")

# 2: messages.body (a small body stored inline; NULL when it is a file in messages/).
# 3: recipients.notify/orcpt (RFC 3461 NOTIFY and ORCPT), messages.delay_warned.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id    TEXT PRIMARY KEY,
    mail_from   TEXT NOT NULL,
    received_at REAL NOT NULL,
    size        INTEGER NOT NULL,
    prefix      BLOB NOT NULL,
    params      TEXT NOT NULL,
    body        BLOB,
    delay_warned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    row_id       INTEGER PRIMARY KEY,
    queue_id     TEXT NOT NULL,
    address      TEXT NOT NULL,
    original     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'failed', 'held')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply   TEXT,
    lease_owner  TEXT,
    lease_until  REAL,
    recovered    INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL,
    notify       TEXT,
    orcpt        TEXT
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (status, next_attempt);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients (queue_id);
"""


def connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (the writer batches them).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # DESIGN.md, 250 means durable: every COMMIT fsyncs the WAL.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(_SCHEMA)
    _upgrade(conn)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring an older store up to this version in place (columns added, nothing rewritten)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "body" not in columns:  # a version 1 store: every body there is a file
        conn.execute("ALTER TABLE messages ADD COLUMN body BLOB")
    if "delay_warned" not in columns:  # version 2: no delay warning sent yet
        conn.execute("ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(recipients)")}
    for name in ("notify", "orcpt"):
        if name not in columns:  # version 2: NULL is "not given" (RFC 3461 defaults)
            conn.execute(f"ALTER TABLE recipients ADD COLUMN {name} TEXT")


def insert_message(
    conn: sqlite3.Connection,
    msg: NewMessage,
    *,
    node_id: str,
    lease_until: float,
    held: bool = False,
) -> tuple[int, ...]:
    """Insert a message and its recipient rows, leased to `node_id` (or, `held`, held and
    leased to no one); returns the row ids."""
    conn.execute(
        "INSERT INTO messages (queue_id, mail_from, received_at, size, prefix, params, body)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            msg.queue_id,
            format_path(msg.mail_from),
            msg.received_at,
            msg.size,
            msg.prefix,
            json.dumps(dict(msg.params), separators=(",", ":")),
            msg.body,
        ),
    )
    row_ids = []
    for address, original, dsn in msg.recipients:
        cur = conn.execute(
            "INSERT INTO recipients (queue_id, address, original, status, next_attempt,"
            " lease_owner, lease_until, updated_at, notify, orcpt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                msg.queue_id,
                str(address),
                str(original),
                Status.HELD.value if held else Status.QUEUED.value,
                msg.received_at,
                None if held else node_id,
                None if held else lease_until,
                msg.received_at,
                dsn.notify_param,
                dsn.orcpt,
            ),
        )
        assert cur.lastrowid is not None
        row_ids.append(cur.lastrowid)
    return tuple(row_ids)


def message_from_row(row: sqlite3.Row | tuple[object, ...], messages_dir: str) -> QueuedMessage:
    """The message without an inline body (the runner loads it with `load_body` when it
    starts the attempt, so a scan of many rows does not hold their bodies in memory)."""
    queue_id, mail_from, received_at, size, prefix, params, inline = row
    assert isinstance(queue_id, str) and isinstance(mail_from, str)
    assert isinstance(received_at, float) and isinstance(size, int)
    assert isinstance(prefix, bytes) and isinstance(params, str)
    return QueuedMessage(
        queue_id=queue_id,
        mail_from=_parse_path(mail_from, allow_null=True),
        received_at=received_at,
        body_path="" if inline else os.path.join(messages_dir, queue_id),
        size=size,
        prefix=prefix,
        params=json.loads(params),
    )


def load_body(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
    """The inline body of a message (None: no such message, or its body is a file)."""
    row = conn.execute("SELECT body FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    body = row[0]
    assert isinstance(body, bytes)
    return body


def take_due(
    conn: sqlite3.Connection,
    *,
    now: float,
    node_id: str,
    lease_until: float,
    limit: int,
    exclude: Collection[int],
    messages_dir: str,
) -> list[Pending]:
    """Lease up to `limit` due rows (queued, next attempt reached, lease free or run out).

    `exclude` holds rows this process is delivering right now, never taken twice.
    """
    rows = conn.execute(
        "SELECT row_id, queue_id, address, original, attempts, recovered, notify, orcpt"
        " FROM recipients"
        " WHERE status = 'queued' AND next_attempt <= ?"
        " AND (lease_until IS NULL OR lease_until <= ?)"
        " ORDER BY next_attempt LIMIT ?",
        (now, now, limit),
    ).fetchall()
    by_message: dict[str, list[QueuedRecipient]] = {}
    for row_id, queue_id, address, original, attempts, recovered, notify, orcpt in rows:
        if row_id in exclude:
            continue
        by_message.setdefault(queue_id, []).append(
            QueuedRecipient(
                row_id=row_id,
                address=Address.parse(address),
                original=Address.parse(original),
                attempts=attempts,
                recovered=bool(recovered),
                dsn=RecipientDsn.parse(notify, orcpt),
            )
        )
    conn.executemany(
        "UPDATE recipients SET lease_owner = ?, lease_until = ? WHERE row_id = ?",
        [(node_id, lease_until, r.row_id) for rs in by_message.values() for r in rs],
    )
    out = []
    for queue_id, recipients in by_message.items():
        row = conn.execute(
            "SELECT queue_id, mail_from, received_at, size, prefix, params, body IS NOT NULL"
            " FROM messages WHERE queue_id = ?",
            (queue_id,),
        ).fetchone()
        if row is None:
            log.error(logfmt("message-row-missing", id=queue_id))
            continue
        out.append(Pending(message_from_row(row, messages_dir), tuple(recipients), lease_until))
    return out


def claim_delay_warning(conn: sqlite3.Connection, queue_id: str) -> bool:
    """Mark that the message's delay warning goes out; False if it already went (or the
    message is gone): one warning per message, whichever node or attempt asks first."""
    cur = conn.execute(
        "UPDATE messages SET delay_warned = 1 WHERE queue_id = ? AND delay_warned = 0",
        (queue_id,),
    )
    return cur.rowcount == 1


def next_due(conn: sqlite3.Connection) -> float | None:
    """The earliest time a queued row becomes due (next attempt reached and lease free)."""
    row = conn.execute(
        "SELECT MIN(MAX(next_attempt, COALESCE(lease_until, 0))) FROM recipients"
        " WHERE status = 'queued'"
    ).fetchone()
    value = row[0] if row else None
    return float(value) if value is not None else None


def record_outcomes(
    conn: sqlite3.Connection, queue_id: str, updates: Sequence[RowUpdate], now: float
) -> bool:
    """Write the outcome of one attempt; delete the message once no row is left to try.

    Returns True when the message was deleted (its body file is then to be unlinked).
    """
    conn.executemany(
        "UPDATE recipients SET status = ?, attempts = ?, next_attempt = ?, last_reply = ?,"
        " recovered = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
        " WHERE row_id = ?",
        [
            (
                u.status.value,
                u.attempts,
                u.next_attempt,
                u.last_reply,
                int(u.recovered),
                now,
                u.row_id,
            )
            for u in updates
        ],
    )
    return finish_if_done(conn, queue_id)


def finish_if_done(conn: sqlite3.Connection, queue_id: str) -> bool:
    """Delete the message once no row is left to try (none queued or held); True if it was.
    Its body file, if any, is the caller's to unlink after the commit."""
    (left,) = conn.execute(
        "SELECT COUNT(*) FROM recipients WHERE queue_id = ? AND status IN ('queued', 'held')",
        (queue_id,),
    ).fetchone()
    if left:
        return False
    conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
    conn.execute("DELETE FROM messages WHERE queue_id = ?", (queue_id,))
    return True


def free_leases(conn: sqlite3.Connection, owner: str, *, recovered: bool, now: float) -> int:
    """Free the queued rows leased to `owner`; `recovered` marks them so the courier checks
    before delivering again (the owner died mid-attempt: exactly once). Returns how many."""
    cursor = conn.execute(
        "UPDATE recipients SET recovered = MAX(recovered, ?), lease_owner = NULL,"
        " lease_until = NULL, updated_at = ? WHERE status = 'queued' AND lease_owner = ?",
        (int(recovered), now, owner),
    )
    return cursor.rowcount


def recover(conn: sqlite3.Connection, messages_dir: str, *, now: float) -> list[str]:
    """Bring the store back to a consistent state after a stop or crash; returns problems.

    - a body file without a message row never got 250: delete it;
    - a message row without its body (no file, and none inline) cannot be delivered: hold
      its rows, report it;
    - a queued row still leased was perhaps being delivered when the process died: free it
      and mark it recovered, so the courier checks before delivering again (exactly once).
    """
    problems: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        known: set[str] = set()
        with_file: set[str] = set()
        for qid, inline in conn.execute("SELECT queue_id, body IS NOT NULL FROM messages"):
            known.add(qid)
            if not inline:
                with_file.add(qid)
        files = set(os.listdir(messages_dir))
        for name in sorted(files - known):
            os.unlink(os.path.join(messages_dir, name))
            log.info(logfmt("orphan-body-removed", id=name))
        for queue_id in sorted(with_file - files):
            conn.execute(
                "UPDATE recipients SET status = 'held', last_reply = ?, lease_owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE queue_id = ? AND status = 'queued'",
                (BODY_MISSING, now, queue_id),
            )
            problem = logfmt("body-missing", id=queue_id, action="held")
            log.error(problem)
            problems.append(problem)
        cur = conn.execute(
            "UPDATE recipients SET recovered = 1, lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE status = 'queued' AND lease_owner IS NOT NULL",
            (now,),
        )
        if cur.rowcount:
            log.info(logfmt("recovered", rows=cur.rowcount))
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return problems
