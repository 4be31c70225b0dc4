"""The operator's statements on the SQLite store: list, show, hold, release, flush, delete, the
two halves of a bounce, and the figures of `hato status` and the metrics.

Must not import anything of hato but model and this room.

Every function here runs inside a transaction its caller owns, like the statements in
`sqlite.py`: as a job of the writer thread while the server runs (`store.Queue`, the one
owner of the connection, so they never race the runner's writes), or on a connection of
their own while it is stopped (`OfflineAdmin` below; read-only for list/show).
`live` says whether a node may be delivering right now: a row leased by a live node
(`lease_until` in the future) is left alone and counted as `busy` (DESIGN.md, exactly once:
we must not change a row under an attempt whose outcome will be recorded over it). Offline,
no lease is live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from hato.model import Address, QueuedRecipient, RecipientDsn, logfmt
from hato.model.queuestore import (
    ADMIN_BOUNCE,
    BODY_MISSING,
    ActionResult,
    AdminAction,
    BounceDone,
    MessageDetail,
    QueueError,
    QueueStats,
    Returned,
    RowView,
    Selector,
)
from hato.queue import sqlite as store
from hato.queue.selector_sql import row_views, select_rows

T = TypeVar("T")

HEADER_LIMIT = 64 * 1024  # octets of a body read to find its header section


def _rows(
    conn: sqlite3.Connection, selector: Selector, now: float, live: bool, extra: str = ""
) -> list[RowView]:
    sql, args = select_rows(
        selector, recipients="recipients", messages="messages", placeholder="?", extra=extra
    )
    return row_views(conn.execute(sql, args), now=now, live=live)


def list_rows(
    conn: sqlite3.Connection, selector: Selector, *, now: float, live: bool
) -> list[RowView]:
    """The recipients still to deliver (queued or held), oldest message first."""
    return _rows(conn, selector, now, live, " AND r.status IN ('queued', 'held')")


def show_message(
    conn: sqlite3.Connection, queue_id: str, *, messages_dir: str, now: float, live: bool
) -> MessageDetail | None:
    row = conn.execute(
        "SELECT mail_from, received_at, size, prefix, params, substr(body, 1, ?),"
        " body IS NOT NULL FROM messages WHERE queue_id = ?",
        (HEADER_LIMIT, queue_id),
    ).fetchone()
    if row is None:
        return None
    sender, received, size, prefix, params, head, inline = row
    path = os.path.join(messages_dir, queue_id)
    if not inline:
        try:
            with open(path, "rb") as file:
                head = file.read(HEADER_LIMIT)
        except OSError as exc:
            head = f"(cannot read {path}: {exc.strerror})".encode()
    header_end = head.find(b"\r\n\r\n")
    section = head[: header_end + 2] if header_end >= 0 else head
    headers = (prefix + section).decode("utf-8", "replace")
    return MessageDetail(
        queue_id=queue_id,
        sender=sender,
        received_at=received,
        size=size,
        params=json.loads(params),
        body="inline" if inline else path,
        headers=headers,
        recipients=tuple(_rows(conn, Selector(queue_id=queue_id), now, live)),
    )


def apply(
    conn: sqlite3.Connection,
    action: AdminAction,
    selector: Selector,
    *,
    now: float,
    live: bool,
    messages_dir: str,
    log: Callable[[str], None],
) -> ActionResult:
    """Do `action` on the selected rows; the caller commits, then unlinks the bodies of the
    `removed` messages (`unlink_bodies`)."""
    wanted = ("held",) if action is AdminAction.RELEASE else ("queued", "held")
    if action in (AdminAction.HOLD, AdminAction.FLUSH):
        wanted = ("queued",)
    rows = [r for r in _rows(conn, selector, now, live) if r.status in wanted]
    busy = [r for r in rows if r.busy]
    rows = [r for r in rows if not r.busy]
    skipped: list[str] = []
    if action is AdminAction.RELEASE:
        missing = {r.queue_id for r in rows if r.last_reply == BODY_MISSING}
        missing = {q for q in missing if not _has_body(conn, q, messages_dir)}
        skipped = [f"{q}: body file still missing, left held" for q in sorted(missing)]
        rows = [r for r in rows if r.queue_id not in missing]
    ids = [(r.row_id,) for r in rows]
    if action is AdminAction.HOLD:
        conn.executemany(
            "UPDATE recipients SET status = 'held', updated_at = ? WHERE row_id = ?",
            [(now, i) for (i,) in ids],
        )
    elif action in (AdminAction.RELEASE, AdminAction.FLUSH):
        # A flush is Postfix's `postqueue -i/-f`: due now, the backoff kept for later failures.
        conn.executemany(
            "UPDATE recipients SET status = 'queued', next_attempt = ?, updated_at = ?"
            " WHERE row_id = ?",
            [(now, now, i) for (i,) in ids],
        )
    elif action is AdminAction.DELETE:
        conn.executemany("DELETE FROM recipients WHERE row_id = ?", ids)
    else:
        # BOUNCE queues a DSN, which needs the queue's commit path (queue/admin.py `bounce`).
        raise ValueError(f"{action.value}: not a row-only action")
    touched = tuple(dict.fromkeys(r.queue_id for r in rows))
    removed = tuple(q for q in touched if store.finish_if_done(conn, q))
    for r in rows:
        log(logfmt(f"admin-{action.value}", id=r.queue_id, to=f"<{r.recipient}>"))
    return ActionResult(
        action.value, len(rows), touched, len(busy), removed=removed, skipped=tuple(skipped)
    )


def _has_body(conn: sqlite3.Connection, queue_id: str, messages_dir: str) -> bool:
    row = conn.execute(
        "SELECT body IS NOT NULL FROM messages WHERE queue_id = ?", (queue_id,)
    ).fetchone()
    return bool(row and row[0]) or os.path.exists(os.path.join(messages_dir, queue_id))


def claim_for_bounce(
    conn: sqlite3.Connection,
    selector: Selector,
    *,
    now: float,
    live: bool,
    owner: str,
    until: float,
    messages_dir: str,
) -> tuple[list[Returned], int]:
    """Lease the selected queued and held rows to `owner` until `until`, so that neither the
    runner nor another admin command touches them while their DSN is queued, and read what
    the DSN needs. Returns them, and how many rows were left alone as busy."""
    rows = [r for r in _rows(conn, selector, now, live) if r.status in ("queued", "held")]
    ids = [r.row_id for r in rows if not r.busy]
    conn.executemany(
        "UPDATE recipients SET lease_owner = ?, lease_until = ? WHERE row_id = ?",
        [(owner, until, i) for i in ids],
    )
    by_message: dict[str, list[QueuedRecipient]] = {}
    for i in ids:
        qid, address, original, attempts, recovered, notify, orcpt = conn.execute(
            "SELECT queue_id, address, original, attempts, recovered, notify, orcpt"
            " FROM recipients WHERE row_id = ?",
            (i,),
        ).fetchone()
        rcpt = QueuedRecipient(
            row_id=i,
            address=Address.parse(address),
            original=Address.parse(original),
            attempts=attempts,
            recovered=bool(recovered),
            dsn=RecipientDsn.parse(notify, orcpt),
        )
        by_message.setdefault(qid, []).append(rcpt)
    out = []
    for qid, recipients in by_message.items():
        row = conn.execute(
            "SELECT queue_id, mail_from, received_at, size, prefix, params, body IS NOT NULL"
            " FROM messages WHERE queue_id = ?",
            (qid,),
        ).fetchone()
        message = store.message_from_row(row, messages_dir)
        if not message.body_path:  # inline (under 64 KiB): read here, in the same snapshot
            message = dataclasses.replace(message, body=store.load_body(conn, qid))
        out.append(Returned(message, tuple(recipients)))
    return out, len(rows) - len(ids)


def finish_bounce(
    conn: sqlite3.Connection,
    returned: Sequence[Returned],
    kept: Sequence[Returned],
    *,
    now: float,
    owner: str,
    log: Callable[[str], None],
) -> BounceDone:
    """Mark the `returned` rows failed (their DSN is queued) and give the `kept` ones back;
    only rows still claimed by `owner`."""
    failed = 0
    for item in returned:
        for rcpt in item.recipients:
            cur = conn.execute(
                "UPDATE recipients SET status = 'failed', last_reply = ?, updated_at = ?,"
                " lease_owner = NULL, lease_until = NULL WHERE row_id = ? AND lease_owner = ?",
                (str(ADMIN_BOUNCE), now, rcpt.row_id, owner),
            )
            if cur.rowcount:
                failed += 1
                log(logfmt("admin-bounce", id=item.message.queue_id, to=f"<{rcpt.address}>"))
    conn.executemany(
        "UPDATE recipients SET lease_owner = NULL, lease_until = NULL"
        " WHERE row_id = ? AND lease_owner = ?",
        [(r.row_id, owner) for item in kept for r in item.recipients],
    )
    touched = tuple(item.message.queue_id for item in returned)
    removed = tuple(q for q in touched if store.finish_if_done(conn, q))
    return BounceDone(failed, touched, removed)


def stats(conn: sqlite3.Connection, *, now: float, live: bool) -> QueueStats:
    messages, oldest, size = conn.execute(
        "SELECT COUNT(*), MIN(received_at), COALESCE(SUM(size), 0) FROM messages"
    ).fetchone()
    counts = dict.fromkeys(("queued", "deferred", "held", "busy"), 0)
    for status, attempts, lease in conn.execute(
        "SELECT status, attempts, lease_until FROM recipients WHERE status IN ('queued', 'held')"
    ):
        counts[status] += 1
        counts["deferred"] += status == "queued" and attempts > 0
        counts["busy"] += live and lease is not None and lease > now
    finished = dict(
        conn.execute(
            "SELECT status, COUNT(*) FROM recipients WHERE status IN ('delivered', 'failed')"
            " AND updated_at > ? GROUP BY status",
            (now - 3600,),
        ).fetchall()
    )
    return QueueStats(messages, oldest=oldest, bytes=size, finished_last_hour=finished, **counts)


def unlink_bodies(messages_dir: str, queue_ids: Sequence[str]) -> None:
    """After the commit: a crash in between leaves an orphan, which the next open removes."""
    for queue_id in queue_ids:
        with contextlib.suppress(FileNotFoundError):  # an inline body went with its row
            os.unlink(os.path.join(messages_dir, queue_id))


class OfflineConnection:
    """The server is stopped (the caller holds DATA_DIR/hato.lock): a connection of our own.

    Bounce is added by queue/offline.py `OfflineAdmin`: it queues DSNs through the store.
    Raises QueueError for what the store refuses (e.g. a write to a read-only one)."""

    def __init__(self, root: Path, *, writable: bool, log: Callable[[str], None]) -> None:
        self.root = root
        self.messages_dir = str(root / "messages")
        self._log = log
        db = root / "queue.db"
        if not db.exists():
            raise FileNotFoundError(f"no queue store at {db}")
        try:
            if writable:
                self._conn = store.connect(str(db))
            else:
                # Read-only: nothing of the store can change, even if a server starts meanwhile.
                self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise QueueError(None, f"{db}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def list(self, selector: Selector, now: float) -> list[RowView]:
        try:
            return list_rows(self._conn, selector, now=now, live=False)
        except sqlite3.Error as exc:
            raise QueueError(None, f"queue list: {exc}") from exc

    def show(self, queue_id: str, now: float) -> MessageDetail | None:
        try:
            return show_message(
                self._conn, queue_id, messages_dir=self.messages_dir, now=now, live=False
            )
        except sqlite3.Error as exc:
            raise QueueError(None, f"queue show: {exc}") from exc

    def stats(self, now: float) -> QueueStats:
        try:
            return stats(self._conn, now=now, live=False)
        except sqlite3.Error as exc:
            raise QueueError(None, f"queue stats: {exc}") from exc

    def apply(self, action: AdminAction, selector: Selector, now: float) -> ActionResult:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = apply(
                    self._conn,
                    action,
                    selector,
                    now=now,
                    live=False,
                    messages_dir=self.messages_dir,
                    log=self._log,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.rollback()
                raise
        except sqlite3.Error as exc:
            raise QueueError(None, f"queue {action.value}: {exc}") from exc
        unlink_bodies(self.messages_dir, result.removed)
        return result


class AdminJobs:
    """The operator's half of `QueueStore` for `store.Queue`: each operation one job of its
    writer thread (the one owner of the connection), so it never races the runner's writes."""

    messages_dir: str
    live: bool  # False: opened while no server runs, so no lease is live (OfflineAdmin)

    async def _write(
        self,
        run: Callable[[sqlite3.Connection], T],
        after_commit: Callable[[T], None] | None = None,
    ) -> T:
        raise NotImplementedError

    async def admin_list(self, selector: Selector, *, now: float) -> list[RowView]:
        live = self.live
        return await self._write(lambda c: list_rows(c, selector, now=now, live=live))

    async def admin_show(self, queue_id: str, *, now: float) -> MessageDetail | None:
        mdir, live = self.messages_dir, self.live
        return await self._write(
            lambda c: show_message(c, queue_id, messages_dir=mdir, now=now, live=live)
        )

    async def admin_apply(
        self, action: AdminAction, selector: Selector, *, now: float, log: Callable[[str], None]
    ) -> ActionResult:
        mdir, live = self.messages_dir, self.live

        def run(conn: sqlite3.Connection) -> ActionResult:
            return apply(conn, action, selector, now=now, live=live, messages_dir=mdir, log=log)

        return await self._write(run, lambda result: unlink_bodies(mdir, result.removed))

    async def claim_for_bounce(
        self, selector: Selector, *, now: float, owner: str, until: float
    ) -> tuple[list[Returned], int]:
        mdir, live = self.messages_dir, self.live
        return await self._write(
            lambda c: claim_for_bounce(
                c, selector, now=now, live=live, owner=owner, until=until, messages_dir=mdir
            )
        )

    async def finish_bounce(
        self,
        returned: Sequence[Returned],
        kept: Sequence[Returned],
        *,
        now: float,
        owner: str,
        log: Callable[[str], None],
    ) -> BounceDone:
        mdir = self.messages_dir
        return await self._write(
            lambda c: finish_bounce(c, returned, kept, now=now, owner=owner, log=log),
            lambda done: unlink_bodies(mdir, done.removed),
        )

    async def stats(self, *, now: float) -> QueueStats:
        live = self.live
        return await self._write(lambda c: stats(c, now=now, live=live))
