"""Reading and steering the queue store for an operator: list, show, hold, release, delete,
flush, bounce, and the figures `hato status` shows.

Must not import anything of hato but model and this room.

Theory of operation. Every operation is a function of a `sqlite3.Connection` that runs inside
a transaction its caller owns, like the statements in `sqlite.py`. Two callers:
- `LiveAdmin` (the server is running): the functions run as jobs of the queue's group-commit
  writer thread, the one owner of the connection, so they never race the runner's writes;
- `OfflineAdmin` (the server is stopped; the caller holds DATA_DIR/hato.lock): a connection
  of its own, read-only for list/show.
A recipient row leased by a live node (`lease_until` in the future) is being delivered right
now: it is left alone and counted as `busy` (DESIGN.md, exactly once: we must not change a row
under an attempt whose outcome will be recorded over it). Offline, no lease is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hato.model import (
    Address,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    Reply,
    logfmt,
)
from hato.queue import sqlite as store
from hato.queue.body import QueueWriteError
from hato.queue.bounce import Committer, Notifier, report_for
from hato.queue.schedule import Schedule
from hato.queue.store import Queue
from hato.queue.writer import Job

T = TypeVar("T")

# RFC 3463 §3.1: X.0.0 "other undefined status"; the operator gave up on the message (like
# Postfix's `postsuper -f`, "message is administratively expired").
ADMIN_BOUNCE = Reply(550, "5.0.0", "message returned by the mail administrator")
BODY_MISSING = "body file missing"  # what sqlite.recover writes on a held row
HEADER_LIMIT = 64 * 1024  # octets of a body read to find its header section


class Action(enum.Enum):
    HOLD = "hold"
    RELEASE = "release"
    FLUSH = "flush"
    DELETE = "delete"
    BOUNCE = "bounce"


@dataclass(frozen=True, slots=True)
class Selector:
    """Which recipient rows an operation is about; fields given are ANDed, none = all."""

    queue_id: str | None = None
    domain: str | None = None  # the recipient's domain, any case
    sender: str | None = None  # the envelope sender ("" or "<>": the null sender)

    def where(self) -> tuple[str, list[object]]:
        clauses, args = ["1"], list[object]()
        if self.queue_id is not None:
            clauses.append("r.queue_id = ?")
            args.append(self.queue_id)
        if self.domain is not None:
            clauses.append("lower(r.address) LIKE ? ESCAPE '\\'")
            args.append("%@" + _like_escape(self.domain.lower().rstrip(".")))
        if self.sender is not None:
            sender = self.sender.strip()
            sender = sender if sender.startswith("<") else f"<{sender}>"
            clauses.append("lower(m.mail_from) = ?")
            args.append(sender.lower())
        return " AND ".join(clauses), args

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selector:
        def text(key: str) -> str | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            return value

        return cls(queue_id=text("id"), domain=text("domain"), sender=text("sender"))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class RowView:
    """One recipient of one queued message, as `hato queue list` shows it."""

    queue_id: str
    received_at: float
    size: int
    sender: str  # <local@domain> or <>
    row_id: int
    recipient: str
    original: str
    status: str  # queued, held, delivered, failed
    attempts: int
    next_attempt: float
    last_reply: str | None
    busy: bool  # leased by a live node: being delivered now
    why: str = ""  # why it is still queued (see `explain`)


@dataclass(frozen=True, slots=True)
class MessageDetail:
    queue_id: str
    sender: str
    received_at: float
    size: int
    params: dict[str, str | None]
    body: str  # "inline" or the spool file's path
    headers: str  # our added header lines, then the message's header section
    recipients: tuple[RowView, ...]


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: str
    rows: int  # recipient rows changed
    messages: tuple[str, ...]  # queue ids touched
    busy: int = 0  # rows left alone: being delivered now
    removed: tuple[str, ...] = ()  # messages gone from the queue
    skipped: tuple[str, ...] = ()  # notes on rows left alone for another reason


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    queued: int  # recipient rows waiting for delivery
    deferred: int  # ... of which tried at least once
    held: int
    busy: int
    oldest: float | None  # arrival of the oldest message
    bytes: int
    finished_last_hour: dict[str, int] = field(default_factory=dict)  # status -> rows


def as_json(value: RowView | MessageDetail | ActionResult | QueueStats) -> dict[str, Any]:
    return asdict(value)


# ---- the functions of a connection ----

_ROW_COLUMNS = (
    "r.queue_id, m.received_at, m.size, m.mail_from, r.row_id, r.address, r.original,"
    " r.status, r.attempts, r.next_attempt, r.last_reply, r.lease_until"
)

_FIELDS = [f.name for f in dataclasses.fields(RowView)][:11]


def _rows(
    conn: sqlite3.Connection, selector: Selector, now: float, live: bool, extra: str = ""
) -> list[RowView]:
    where, args = selector.where()
    cursor = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM recipients r JOIN messages m ON m.queue_id = r.queue_id"
        f" WHERE {where}{extra} ORDER BY m.received_at, r.queue_id, r.row_id",
        args,
    )
    out = []
    for row in cursor:
        lease = row[-1]
        view = RowView(**dict(zip(_FIELDS, row, strict=False)), busy=live and (lease or 0) > now)
        out.append(dataclasses.replace(view, why=explain(view, now)))
    return out


def list_rows(
    conn: sqlite3.Connection, selector: Selector, *, now: float, live: bool
) -> list[RowView]:
    """The recipients still to deliver (queued or held), oldest message first."""
    return _rows(conn, selector, now, live, " AND r.status IN ('queued', 'held')")


def explain(row: RowView, now: float) -> str:
    """Why this recipient is still in the queue, in words an operator acts on."""
    if row.status == "delivered":
        return "delivered"
    if row.status == "failed":
        return f"failed ({row.last_reply}); a bounce was due"
    if row.status == "held":
        if row.last_reply == BODY_MISSING:
            return "held: the message body file is missing (delete it or restore the file)"
        return "held by the administrator (hato queue release to deliver it)"
    if row.busy:
        return "being delivered now"
    when = _in(row.next_attempt - now)
    if row.attempts == 0:
        return f"not tried yet; due {when}"
    return f"{_cause(row.last_reply)}; {row.attempts} attempt(s), next try {when}"


def _cause(last_reply: str | None) -> str:
    if not last_reply:
        return "deferred"
    parts = last_reply.split(" ", 2)
    enhanced = parts[1] if len(parts) > 1 and parts[1][:1].isdigit() else ""
    detail, _, _ = enhanced.partition(".")
    subject = enhanced[len(detail) + 1 :]
    # RFC 3463 §3.5 X.4.3 directory server failure, X.4.4 unable to route: DNS.
    if subject in ("4.3", "4.4"):
        return f"DNS lookup failed: {last_reply}"
    # RFC 3463 §3.8 X.7.5 cryptographic failure: the handshake itself broke (the reply says
    # why: an untrusted or mismatched certificate is fixed with a ca_file or the right name).
    if subject == "7.5" and "TLS handshake failed" in last_reply:
        return f"TLS with the receiving server failed: {last_reply}"
    # RFC 3463 §3.8 / RFC 3207 and RFC 8689: X.7.5 cryptographic failure, X.7.10 encryption
    # needed: the TLS policy (MTA-STS, DANE, REQUIRETLS) would not let it go in clear.
    if subject in ("7.5", "7.10"):
        return f"blocked by the TLS policy: {last_reply}"
    # RFC 3463 §3.5: X.4.1 no answer from host, X.4.2 bad connection.
    if subject in ("4.1", "4.2"):
        return f"could not connect to the receiving server: {last_reply}"
    return f"the last reply was {last_reply}"


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 90:
        return f"in {round(seconds)}s"
    if seconds < 5400:
        return f"in {round(seconds / 60)} min"
    return f"in {seconds / 3600:.1f} h"


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
    action: Action,
    selector: Selector,
    *,
    now: float,
    live: bool,
    messages_dir: str,
    log: Callable[[str], None],
) -> ActionResult:
    """Do `action` on the selected rows; the caller commits, then unlinks the bodies of the
    `removed` messages that were files (`body_file_ids`)."""
    wanted = ("held",) if action is Action.RELEASE else ("queued", "held")
    if action in (Action.HOLD, Action.FLUSH):
        wanted = ("queued",)
    rows = [r for r in _rows(conn, selector, now, live) if r.status in wanted]
    busy = [r for r in rows if r.busy]
    rows = [r for r in rows if not r.busy]
    skipped: list[str] = []
    if action is Action.RELEASE:
        missing = {r.queue_id for r in rows if r.last_reply == BODY_MISSING}
        missing = {q for q in missing if not _has_body(conn, q, messages_dir)}
        skipped = [f"{q}: body file still missing, left held" for q in sorted(missing)]
        rows = [r for r in rows if r.queue_id not in missing]
    ids = [(r.row_id,) for r in rows]
    if action is Action.HOLD:
        conn.executemany(
            "UPDATE recipients SET status = 'held', updated_at = ? WHERE row_id = ?",
            [(now, i) for (i,) in ids],
        )
    elif action in (Action.RELEASE, Action.FLUSH):
        # A flush is Postfix's `postqueue -i/-f`: due now, the backoff kept for later failures.
        conn.executemany(
            "UPDATE recipients SET status = 'queued', next_attempt = ?, updated_at = ?"
            " WHERE row_id = ?",
            [(now, now, i) for (i,) in ids],
        )
    elif action is Action.DELETE:
        conn.executemany("DELETE FROM recipients WHERE row_id = ?", ids)
    else:
        # BOUNCE queues a DSN, which needs the queue's commit path: `bounce` below.
        raise ValueError(f"{action.value}: not a row-only action")
    touched = tuple(dict.fromkeys(r.queue_id for r in rows))
    removed = tuple(q for q in touched if _finish_if_done(conn, q))
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


def _finish_if_done(conn: sqlite3.Connection, queue_id: str) -> bool:
    """Remove the message once no row is left to try (as `sqlite.record_outcomes` does)."""
    (left,) = conn.execute(
        "SELECT COUNT(*) FROM recipients WHERE queue_id = ? AND status IN ('queued', 'held')",
        (queue_id,),
    ).fetchone()
    if left:
        return False
    conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
    conn.execute("DELETE FROM messages WHERE queue_id = ?", (queue_id,))
    return True


# ---- bounce: the rows fail and their senders get a DSN ----


@dataclass(frozen=True, slots=True)
class Returned:
    """One message's recipients an operator returns to its sender: claimed, not yet failed."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


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
        message = store._message_from_row(row, messages_dir)
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
) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """Mark the `returned` rows failed (their DSN is queued) and give the `kept` ones back;
    only rows still claimed by `owner`. Returns rows failed, messages touched, removed."""
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
    removed = tuple(q for q in touched if _finish_if_done(conn, q))
    return failed, touched, removed


async def _job(
    queue: Queue,
    run: Callable[[sqlite3.Connection], T],
    after: Callable[[T], None] | None = None,
) -> T:
    """`run` as a job of the queue's writer thread (the one owner of its connection)."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    queue.writer.submit(Job(run=run, future=future, after_commit=after))
    return await future


async def bounce(
    queue: Queue,
    notifier: Notifier,
    selector: Selector,
    *,
    now: float,
    live: bool,
    log: Callable[[str], None],
) -> tuple[ActionResult, tuple[str, ...]]:
    """Return the selected recipients to their senders: claim the rows, queue one RFC 3464
    DSN per message through `notifier` (as the runner does for a permanent failure), then
    mark the rows failed. Returns the result and the queue ids of the DSNs.

    As in the runner, the DSN is committed before the rows are marked: a crash in between
    can repeat a notice, never lose one. RFC 5321 §6.1: a failure after acceptance MUST be
    reported; a message whose DSN cannot be queued stays in the queue, and says so."""
    mdir = queue.messages_dir
    owner = f"{queue.node_id}/admin"
    until = now + queue.lease_seconds
    claimed, busy = await _job(
        queue,
        lambda c: claim_for_bounce(
            c, selector, now=now, live=live, owner=owner, until=until, messages_dir=mdir
        ),
    )
    returned, kept, notes, dsns = [], [], [], []
    for item in claimed:
        failure = PermFailed(ADMIN_BOUNCE)
        # report_for honours NOTIFY (RFC 3461 §4.1) and never answers the null sender
        # (RFC 5321 §6.1: no notification about a notification); it logs what it drops.
        reports = [
            report
            for rcpt in item.recipients
            if (report := report_for(item.message, rcpt, failure, now=now)) is not None
        ]
        if reports:
            try:
                dsns.append(await notifier.send(item.message, reports))
            except (QueueWriteError, OSError) as exc:
                detail = exc.detail if isinstance(exc, QueueWriteError) else str(exc)
                log(logfmt("dsn-failed", id=item.message.queue_id, error=detail, by="admin"))
                notes.append(f"{item.message.queue_id}: the bounce could not be queued ({detail})")
                kept.append(item)
                continue
        returned.append(item)
    failed, touched, removed = await _job(
        queue,
        lambda c: finish_bounce(c, returned, kept, now=now, owner=owner, log=log),
        lambda done: _unlink_bodies(mdir, done[2]),
    )
    result = ActionResult(
        Action.BOUNCE.value, failed, touched, busy, removed=removed, skipped=tuple(notes)
    )
    return result, tuple(dsns)


class _Now:
    """A `Clock` from a wall-clock function (the DSN's dates and queue ids use `now`)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    def monotonic(self) -> float:
        return time.monotonic()


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


# ---- the two ways in ----


class LiveAdmin:
    """The server is running: every operation is a job of the queue's writer thread."""

    def __init__(
        self,
        queue: Queue,
        now: Callable[[], float],
        log: Callable[[str], None],
        *,
        hostname: str | None = None,
        schedule: Schedule | None = None,
        committer: Committer | None = None,
    ) -> None:
        """`hostname`: this MTA's name in the DSNs of `bounce` (default: the system's), as
        the runner's; `schedule`: the runner's (its lifetime dates the DSN); `committer`: the
        runner's (queue/bounce.py)."""
        self._queue = queue
        self._now = now
        self._log = log
        self._notifier = Notifier(
            queue,
            hostname=hostname or socket.gethostname(),
            clock=_Now(now),
            schedule=schedule or Schedule(),
            committer=committer,
        )

    async def _run(
        self, run: Callable[[sqlite3.Connection], T], after: Callable[[T], None] | None = None
    ) -> T:
        return await _job(self._queue, run, after)

    async def list(self, selector: Selector) -> list[RowView]:
        now = self._now()
        return await self._run(lambda c: list_rows(c, selector, now=now, live=True))

    async def show(self, queue_id: str) -> MessageDetail | None:
        now, mdir = self._now(), self._queue.messages_dir
        return await self._run(
            lambda c: show_message(c, queue_id, messages_dir=mdir, now=now, live=True)
        )

    async def stats(self) -> QueueStats:
        now = self._now()
        return await self._run(lambda c: stats(c, now=now, live=True))

    async def apply(self, action: Action, selector: Selector) -> ActionResult:
        now, mdir = self._now(), self._queue.messages_dir
        if action is Action.BOUNCE:
            notifier, log = self._notifier, self._log
            result, _ = await bounce(self._queue, notifier, selector, now=now, live=True, log=log)
            return result

        def run(conn: sqlite3.Connection) -> ActionResult:
            return apply(
                conn, action, selector, now=now, live=True, messages_dir=mdir, log=self._log
            )

        return await self._run(run, lambda result: _unlink_bodies(mdir, result.removed))


class OfflineAdmin:
    """The server is stopped (the caller holds DATA_DIR/hato.lock): a connection of our own."""

    def __init__(
        self,
        root: Path,
        *,
        writable: bool,
        log: Callable[[str], None],
        hostname: str | None = None,
        committer: Callable[[Queue], Committer] | None = None,
    ) -> None:
        """`committer`: how `bounce` queues a DSN into the queue opened here (queue/bounce.py;
        the CLI's encrypts a keyed sender's copy as the server's does)."""
        self.root = root
        self._committer = committer
        self.messages_dir = str(root / "messages")
        self._log = log
        self._hostname = hostname or socket.gethostname()
        db = root / "queue.db"
        if not db.exists():
            raise FileNotFoundError(f"no queue store at {db}")
        if writable:
            self._conn = store.connect(str(db))
        else:
            # Read-only: nothing of the store can change, even if a server starts meanwhile.
            self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)

    def close(self) -> None:
        self._conn.close()

    def list(self, selector: Selector, now: float) -> list[RowView]:
        return list_rows(self._conn, selector, now=now, live=False)

    def show(self, queue_id: str, now: float) -> MessageDetail | None:
        return show_message(
            self._conn, queue_id, messages_dir=self.messages_dir, now=now, live=False
        )

    def stats(self, now: float) -> QueueStats:
        return stats(self._conn, now=now, live=False)

    def apply(self, action: Action, selector: Selector, now: float) -> ActionResult:
        if action is Action.BOUNCE:
            return asyncio.run(self._bounce(selector, now))
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
        _unlink_bodies(self.messages_dir, result.removed)
        return result

    async def _bounce(self, selector: Selector, now: float) -> ActionResult:
        """The queue opened here, without recovery (no server runs: we hold its lock), so
        the DSNs go through the same commit path as the running server's."""
        clock = _Now(lambda: now)
        queue = await Queue.open(self.root, clock=clock, node_id="admin", recover=False)
        try:
            notifier = Notifier(
                queue,
                hostname=self._hostname,
                clock=clock,
                schedule=Schedule(),
                committer=self._committer(queue) if self._committer is not None else None,
            )
            result, dsns = await bounce(
                queue, notifier, selector, now=now, live=False, log=self._log
            )
            # Nobody here delivers them: free the DSNs' rows for the next server, now due.
            await _job(
                queue,
                lambda c: c.executemany(
                    "UPDATE recipients SET lease_owner = NULL, lease_until = NULL"
                    " WHERE queue_id = ?",
                    [(q,) for q in dsns],
                ),
            )
        finally:
            await queue.close()
        return result


def _unlink_bodies(messages_dir: str, queue_ids: tuple[str, ...]) -> None:
    """After the commit: a crash in between leaves an orphan, which the next open removes."""
    for queue_id in queue_ids:
        with contextlib.suppress(FileNotFoundError):  # an inline body went with its row
            os.unlink(os.path.join(messages_dir, queue_id))
