"""`QueueStore`: what the rest of Hato asks of the durable queue, whatever holds it.

Must not import anything of hato but model and this room.

DESIGN.md puts the seam in model/; it lives here because a message is received into a
`BodyWriter` (queue/body.py: memory, then a spool file), an I/O object model/ cannot hold.
Everything else it speaks is a value of `hato.model.queuestore`; no caller sees a database's
rows or errors. Backends: `store.Queue` on SQLite (the embedded default; its statements are
in `sqlite.py` and `sqlite_admin.py`), and a PostgreSQL one for several nodes. Every backend
passes the one contract suite, tests/contract/test_queuestore_contract.py.

The promises (DESIGN.md: 250 means durable, exactly once):
- `commit` returns only once the message and its recipient rows are durable; the rows are
  then leased to this node and the message is handed to `wait_fresh` in memory (a store
  shared by several nodes may instead leave them to any node when this node's runner is
  busy, see `watch`, and wake the others). It raises
  QueueWriteError, with nothing of the message left, when that cannot be done.
- A row is delivered by one node at a time: `take_due` leases due rows to this node
  (`node_id`) until now + `lease_seconds`; a lease that ran out belongs to nobody again, so
  the rows of a node that died come back by themselves; `record` frees the lease.
- A message is removed (with its body) once none of its rows is queued or held.
- Admin operations leave rows leased by a live node alone (counted as busy). Bounce is two
  steps around the DSN's commit (queue/admin.py `bounce`): `claim_for_bounce` leases the rows
  to the operator, `finish_bounce` fails them (only those still leased to that owner).
- Every method raises QueueError (QueueWriteError for writes) for a store failure, never the
  backend's own exception.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from hato.model import Address, QueuedMessage, RecipientDsn, ReversePath
from hato.model.queuestore import (
    ActionResult,
    AdminAction,
    BounceDone,
    MessageDetail,
    Pending,
    QueueStats,
    Returned,
    RowUpdate,
    RowView,
    Selector,
)
from hato.queue.body import BodyWriter

RecipientSpec = tuple[Address, Address] | tuple[Address, Address, RecipientDsn]
LogSink = Callable[[str], None]  # where an admin operation logs each row it changed


class QueueStore(Protocol):
    """The durable queue (see the module docstring)."""

    @property
    def node_id(self) -> str:
        """Who this process is in lease owners."""
        ...

    @property
    def lease_seconds(self) -> float:
        """How long a lease taken by `commit` and `take_due` lasts."""
        ...

    @property
    def messages_dir(self) -> str:
        """A private directory (0700) on the spool's file system, for body and scratch files."""
        ...

    @property
    def problems(self) -> tuple[str, ...]:
        """What opening the store found wrong (log lines for the operator), e.g. a lost body."""
        ...

    # ---- receiving ----

    def has_room(self, size_hint: int = 0) -> bool:
        """Whether to take a new message of about `size_hint` octets (RFC 1870 SIZE=)."""
        ...

    def new_body(self) -> BodyWriter:
        """A new body, with a fresh queue id, to stream a message into."""
        ...

    async def commit(
        self,
        body: BodyWriter,
        *,
        mail_from: ReversePath,
        recipients: Sequence[RecipientSpec],
        prefix: bytes,
        params: Mapping[str, str | None],
        unkeyed: Collection[str] = (),
    ) -> str:
        """Make the message durable and return its queue id (only then may a session say 250).

        `recipients`: (deliver-to, original RCPT TO[, RFC 3461 NOTIFY/ORCPT]); `params`: the
        MAIL parameters; with HOLD_PARAM among them the rows are committed held (not handed
        to `wait_fresh`, not due until released). Raises QueueWriteError (the body is gone,
        no row exists).

        `unkeyed`: the recipients (canonical key-store addresses, crypto/keystore.py) this
        copy is stored in the clear for on an answer "no key" that may be stale (kept in
        memory: model/notified.py). A store that holds the users' keys itself (PostgreSQL)
        checks them in the commit's own transaction and raises KeyAppeared, nothing stored,
        if one has a key by then (the body's file, if it has one, is left for the caller to
        read and discard; an inline body is gone); the SQLite queue holds no keys (keys.db
        is another file, whose answers are never stale) and ignores it."""
        ...

    # ---- the runner ----

    async def wait_fresh(self) -> list[Pending]:
        """Wait for messages committed by this process and take them (already leased)."""
        ...

    async def watch(self, wake: Callable[[], None], busy: Callable[[], bool]) -> None:
        """Call `wake` whenever rows may have become due that this process was not handed
        in memory (another node's commit or an operator's release or flush: PostgreSQL's
        LISTEN/NOTIFY), until cancelled; `busy()`: this process's runner has no free delivery
        slot (a shared store then leaves new mail to other nodes). SQLite: never wakes."""
        ...

    async def take_due(self, *, limit: int, exclude: Collection[int]) -> list[Pending]:
        """Lease and return at most `limit` due rows (queued, next attempt reached, lease free
        or run out), grouped by message; never a row in `exclude` (in flight here)."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest queued row becomes due (next attempt reached, lease free)."""
        ...

    async def load_body(self, message: QueuedMessage) -> QueuedMessage:
        """`message` with its body in memory when it came without one and has no file."""
        ...

    def release(self, queue_id: str) -> None:
        """The runner is done with this message's attempt (its body no longer held)."""
        ...

    async def claim_delay_warning(self, queue_id: str) -> bool:
        """True once per message, to whichever node or attempt asks first."""
        ...

    async def record(
        self, queue_id: str, updates: Sequence[RowUpdate], *, has_file: bool = True
    ) -> bool:
        """Record one attempt's outcomes (delivered, deferred to `next_attempt`, failed) and
        free the rows' leases; True when the message is finished and removed."""
        ...

    async def free_leases(self, owner: str, *, recovered: bool) -> int:
        """Free the queued rows leased to `owner` (a node that died, or one that will not
        deliver them); `recovered`: the courier is to check before delivering again."""
        ...

    # ---- the operator (server running: rows leased by a live node are busy) ----

    async def admin_list(self, selector: Selector, *, now: float) -> list[RowView]:
        """The recipients still to deliver (queued or held), oldest message first."""
        ...

    async def admin_show(self, queue_id: str, *, now: float) -> MessageDetail | None:
        """One message, its header section and all its rows; None if there is none."""
        ...

    async def admin_apply(
        self, action: AdminAction, selector: Selector, *, now: float, log: LogSink
    ) -> ActionResult:
        """Hold, release (not a row whose body is missing), flush (due now) or delete the
        selected rows; a message left with no row to try is removed. Not BOUNCE."""
        ...

    async def claim_for_bounce(
        self, selector: Selector, *, now: float, owner: str, until: float
    ) -> tuple[list[Returned], int]:
        """Lease the selected queued and held rows to `owner` until `until` and read what
        their DSN needs (inline bodies included); also how many were busy."""
        ...

    async def finish_bounce(
        self,
        returned: Sequence[Returned],
        kept: Sequence[Returned],
        *,
        now: float,
        owner: str,
        log: LogSink,
    ) -> BounceDone:
        """Fail the `returned` rows with ADMIN_BOUNCE and free the `kept` ones; only rows
        still leased to `owner`. Messages left with no row to try are removed."""
        ...

    async def stats(self, *, now: float) -> QueueStats:
        """The figures of `hato status` and the metrics."""
        ...

    async def close(self) -> None:
        """Finish what was submitted, then let go of the store."""
        ...
