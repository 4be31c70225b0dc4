"""`hato store copy` of the queue: the SQLite queue (DATA_DIR/queue) into the shared PostgreSQL
queue and back, messages, recipient rows and bodies, for an installation that changes backend.

Must not import anything of hato but model and this room. The caller holds DATA_DIR/hato.lock
(no server runs on the data directory) and has checked that no node runs on PostgreSQL.

Theory of operation (DESIGN.md: 250 means durable, exactly once).
- A message is copied whole or not at all: its message row, its body and all its recipient
  rows go in one destination transaction (a page of messages per transaction). The message
  row's queue id is the natural key: a message the destination already has is skipped, so a
  second run, or a run after a crash mid-copy, copies only what is missing, never twice.
- Bodies are streamed, never whole in memory: on SQLite a large body is the file
  `messages/<queue_id>`, read 1 MiB at a time into `queue_body_chunks` rows; back, the chunks
  are streamed from a server-side cursor into that file, fsynced (and the directory once per
  page) before the transaction that inserts its message row commits: as in the queue itself,
  the message row is the commit point, and a file without one is removed at the next open.
- Each recipient row keeps its row id where the destination has no row of that id (the
  Maildir file name comes from it: a row whose earlier delivery was perhaps not recorded is
  looked up under the same name, not delivered twice); PostgreSQL's sequence is moved past the
  ids copied, under a table lock, so a node committing meanwhile never draws one of them.
  A row leased on the source (its server died mid-attempt) arrives unleased and `recovered`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from hato.queue import sqlite as sqlite_store
from hato.queue.postgres_rows import CHUNK

PAGE = 100  # messages per destination transaction
_MESSAGE = "queue_id, mail_from, received_at, size, prefix, params, body, delay_warned"
_RCPT = (
    "row_id, address, original, status, attempts, next_attempt, last_reply, lease_owner,"
    " recovered, updated_at, notify, orcpt"
)
_RCPT_INSERT = (
    "queue_id, address, original, status, attempts, next_attempt, last_reply,"
    " recovered, updated_at, notify, orcpt"
)


@dataclass(slots=True)
class QueueCopied:
    messages: int = 0
    recipients: int = 0
    already: int = 0  # messages the destination had
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"queue: {self.messages} messages ({self.recipients} recipients) copied, "
            f"{self.already} already there"
        )


def _unleased(row: Sequence[Any]) -> tuple[Any, ...]:
    """A source recipient row as the destination gets it: no lease; `recovered` if it had
    one (its node stopped while delivering it)."""
    _, address, original, status, attempts, next_attempt, last_reply, owner, recovered, *rest = row
    return (
        address,
        original,
        status,
        attempts,
        next_attempt,
        last_reply,
        bool(recovered) or owner is not None,
        *rest,
    )


def _sqlite_pages(db: sqlite3.Connection) -> Iterator[list[str]]:
    last = ""
    while True:
        page = [
            str(qid)
            for (qid,) in db.execute(
                "SELECT queue_id FROM messages WHERE queue_id > ? ORDER BY queue_id LIMIT ?",
                (last, PAGE),
            )
        ]
        if not page:
            return
        yield page
        last = page[-1]


def sqlite_to_pg(root: Path, conn: psycopg.Connection[Any]) -> QueueCopied:
    """Copy the SQLite queue in `root` (DATA_DIR/queue) into PostgreSQL (autocommit mode)."""
    done = QueueCopied()
    if not (root / "queue.db").exists():
        return done
    db = sqlite3.connect(root / "queue.db", isolation_level=None)
    try:
        db.execute("PRAGMA query_only = 1")
        found = conn.execute("SELECT pg_get_serial_sequence('queue_recipients', 'row_id')")
        seq = str((found.fetchone() or ("",))[0])
        for page in _sqlite_pages(db):
            with conn.transaction():
                # Nodes committing meanwhile wait for this page: no id drawn from the sequence
                # can meet one copied here (the sequence is moved past them before COMMIT).
                conn.execute("LOCK TABLE queue_recipients IN SHARE ROW EXCLUSIVE MODE")
                for queue_id in page:
                    _to_pg(db, conn, root, queue_id, seq, done)
                conn.execute(
                    "SELECT setval(%s::regclass, greatest(coalesce(max(row_id), 1),"
                    " coalesce(pg_sequence_last_value(%s::regclass), 1))) FROM queue_recipients",
                    (seq, seq),
                )
    finally:
        db.close()
    return done


def _to_pg(
    db: sqlite3.Connection,
    conn: psycopg.Connection[Any],
    root: Path,
    queue_id: str,
    seq: str,
    done: QueueCopied,
) -> None:
    row = db.execute(f"SELECT {_MESSAGE} FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    body_file = root / "messages" / queue_id
    if row[6] is None and not body_file.exists():
        done.problems.append(f"queue: {queue_id}: its body file is missing; not copied")
        return
    values = (*row[:7], bool(row[7]))
    added = conn.execute(
        f"INSERT INTO queue_messages ({_MESSAGE}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (queue_id) DO NOTHING RETURNING 1",
        values,
    ).fetchone()
    if added is None:
        done.already += 1
        return
    if row[6] is None:
        with open(body_file, "rb") as body:
            for number, chunk in enumerate(iter(lambda: body.read(CHUNK), b"")):
                conn.execute(
                    "INSERT INTO queue_body_chunks (queue_id, seq, data) VALUES (%s, %s, %s)",
                    (queue_id, number, chunk),
                )
    rows = db.execute(
        f"SELECT {_RCPT} FROM recipients WHERE queue_id = ? ORDER BY row_id", (queue_id,)
    )
    marks = ", ".join(["%s"] * 10)
    for rcpt in rows:
        conn.execute(
            f"INSERT INTO queue_recipients (row_id, {_RCPT_INSERT}) VALUES ("
            "CASE WHEN EXISTS (SELECT 1 FROM queue_recipients WHERE row_id = %s)"
            f" THEN nextval(%s::regclass) ELSE %s END, %s, {marks})",
            (rcpt[0], seq, rcpt[0], queue_id, *_unleased(rcpt)),
        )
        done.recipients += 1
    done.messages += 1


def pg_to_sqlite(conn: psycopg.Connection[Any], root: Path) -> QueueCopied:
    """Copy the PostgreSQL queue into the SQLite queue in `root` (made if need be)."""
    done = QueueCopied()
    (root / "messages").mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite_store.connect(str(root / "queue.db"))
    try:
        last = ""
        while True:
            page = conn.execute(
                f"SELECT {_MESSAGE} FROM queue_messages WHERE queue_id > %s"
                " ORDER BY queue_id LIMIT %s",
                (last, PAGE),
            ).fetchall()
            if not page:
                return done
            last = page[-1][0]
            _page_to_sqlite(conn, db, root, page, done)
    finally:
        db.close()


def _page_to_sqlite(
    conn: psycopg.Connection[Any],
    db: sqlite3.Connection,
    root: Path,
    page: list[tuple[Any, ...]],
    done: QueueCopied,
) -> None:
    fresh = []
    for row in page:
        queue_id = row[0]
        if db.execute("SELECT 1 FROM messages WHERE queue_id = ?", (queue_id,)).fetchone():
            done.already += 1
            continue
        if row[6] is None:
            _write_body(conn, root / "messages" / queue_id, queue_id)
        fresh.append(row)
    if not fresh:
        return
    dir_fd = os.open(root / "messages", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the body files' names are durable before their rows commit
    finally:
        os.close(dir_fd)
    rcpts: dict[str, list[tuple[Any, ...]]] = {}
    for rcpt in conn.execute(
        f"SELECT queue_id, {_RCPT} FROM queue_recipients WHERE queue_id = ANY(%s) ORDER BY row_id",
        ([row[0] for row in fresh],),
    ):
        rcpts.setdefault(rcpt[0], []).append(rcpt[1:])
    db.execute("BEGIN IMMEDIATE")
    try:
        for row in fresh:
            db.execute(
                f"INSERT INTO messages ({_MESSAGE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[:7], int(row[7])),
            )
            for rcpt in rcpts.get(row[0], []):
                taken = db.execute("SELECT 1 FROM recipients WHERE row_id = ?", (rcpt[0],))
                db.execute(
                    f"INSERT INTO recipients (row_id, {_RCPT_INSERT})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (None if taken.fetchone() else rcpt[0], row[0], *_unleased(rcpt)),
                )
                done.recipients += 1
            done.messages += 1
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _write_body(conn: psycopg.Connection[Any], path: Path, queue_id: str) -> None:
    """Stream a chunked body into its spool file, fsynced (0600: the umask is 077)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for (data,) in conn.cursor().stream(
            "SELECT data FROM queue_body_chunks WHERE queue_id = %s ORDER BY seq", (queue_id,)
        ):
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
