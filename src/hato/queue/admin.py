"""Reading and steering the queue for an operator: list, show, hold, release, delete, flush,
bounce, and the figures `hato status` shows, over any `QueueStore` (queue/protocol.py).

Must not import anything of hato but model and this room.

Theory of operation. The store does the rows (its SQL, or whatever it speaks: for SQLite,
`sqlite_admin.py`); this module adds what is the same for every store: the bounce, which
queues one RFC 3464 DSN per message through the `Notifier` between the store's two steps
(claim the rows, then fail them), and `LiveAdmin`, what the control socket calls while the
server runs. While it is stopped, queue/offline.py `OfflineAdmin` does the same on the files.
A recipient row leased by a live node is being delivered right now: the store leaves it alone
and counts it as `busy` (DESIGN.md, exactly once).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from hato.model import PermFailed, logfmt
from hato.model.queuestore import (
    ADMIN_BOUNCE,
    ActionResult,
    MessageDetail,
    QueueStats,
    QueueWriteError,
    Returned,
    RowView,
    Selector,
)
from hato.model.queuestore import AdminAction as Action
from hato.queue.bounce import Committer, Notifier, report_for
from hato.queue.explain import _cause, explain
from hato.queue.protocol import QueueStore
from hato.queue.schedule import Schedule

__all__ = [
    "ADMIN_BOUNCE",
    "Action",
    "ActionResult",
    "LiveAdmin",
    "MessageDetail",
    "QueueStats",
    "RowView",
    "Selector",
    "_cause",
    "as_json",
    "bounce",
    "explain",
]


def as_json(value: RowView | MessageDetail | ActionResult | QueueStats) -> dict[str, Any]:
    return asdict(value)


async def bounce(
    queue: QueueStore,
    notifier: Notifier,
    selector: Selector,
    *,
    now: float,
    log: Callable[[str], None],
) -> tuple[ActionResult, tuple[str, ...]]:
    """Return the selected recipients to their senders: claim the rows, queue one RFC 3464
    DSN per message through `notifier` (as the runner does for a permanent failure), then
    mark the rows failed. Returns the result and the queue ids of the DSNs.

    As in the runner, the DSN is committed before the rows are marked: a crash in between
    can repeat a notice, never lose one. RFC 5321 §6.1: a failure after acceptance MUST be
    reported; a message whose DSN cannot be queued stays in the queue, and says so."""
    owner = f"{queue.node_id}/admin"
    until = now + queue.lease_seconds
    claimed, busy = await queue.claim_for_bounce(selector, now=now, owner=owner, until=until)
    returned: list[Returned] = []
    kept: list[Returned] = []
    notes: list[str] = []
    dsns: list[str] = []
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
    done = await queue.finish_bounce(returned, kept, now=now, owner=owner, log=log)
    result = ActionResult(
        Action.BOUNCE.value,
        done.failed,
        done.touched,
        busy,
        removed=done.removed,
        skipped=tuple(notes),
    )
    return result, tuple(dsns)


class WallClock:
    """A `Clock` from a wall-clock function (the DSN's dates and queue ids use `now`)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    def monotonic(self) -> float:
        return time.monotonic()


class LiveAdmin:
    """The server is running: every operation goes to its queue store."""

    def __init__(
        self,
        queue: QueueStore,
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
            clock=WallClock(now),
            schedule=schedule or Schedule(),
            committer=committer,
        )

    async def list(self, selector: Selector) -> list[RowView]:
        return await self._queue.admin_list(selector, now=self._now())

    async def show(self, queue_id: str) -> MessageDetail | None:
        return await self._queue.admin_show(queue_id, now=self._now())

    async def stats(self) -> QueueStats:
        return await self._queue.stats(now=self._now())

    async def apply(
        self, action: Action, selector: Selector, log: Callable[[str], None] | None = None
    ) -> ActionResult:
        """`log`: where this change is logged, instead of the admin's own (e.g. with the uid
        of the control-socket client that asked: server/control.py)."""
        now, log = self._now(), log or self._log
        if action is Action.BOUNCE:
            result, _ = await bounce(self._queue, self._notifier, selector, now=now, log=log)
            return result
        return await self._queue.admin_apply(action, selector, now=now, log=log)
