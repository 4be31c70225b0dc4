"""The durable queue: the `QueueStore` seam (protocol.py) and its SQLite backend (spool files,
the SQLite store with group commit), the retry schedule, and the runner that hands messages
to a Courier (see shared/DESIGN.md, room `queue`).

May import model and durable only.
"""

from hato.model.queuestore import Pending, QueueError, QueueWriteError, RowUpdate, Status
from hato.queue.body import BodyWriter
from hato.queue.bounce import AUTH_PARAM, SPF_PARAM, Committer, Notifier, PlainCommit, report_for
from hato.queue.dsn import Action, Original, RecipientReport, build_dsn
from hato.queue.ids import QueueIdGenerator, Rng, is_queue_id
from hato.queue.protocol import QueueStore
from hato.queue.runner import QueueRunner
from hato.queue.schedule import (
    Schedule,
    backoff,
    delay_warning_due,
    expired_reply,
    is_expired,
    retry_at,
)
from hato.queue.store import (
    DEFAULT_MIN_FREE,
    HOLD_PARAM,
    Queue,
    recover_offline,
    release_leases,
)

__all__ = [
    "AUTH_PARAM",
    "DEFAULT_MIN_FREE",
    "HOLD_PARAM",
    "SPF_PARAM",
    "Action",
    "BodyWriter",
    "Committer",
    "Notifier",
    "Original",
    "Pending",
    "PlainCommit",
    "Queue",
    "QueueError",
    "QueueIdGenerator",
    "QueueRunner",
    "QueueStore",
    "QueueWriteError",
    "RecipientReport",
    "Rng",
    "RowUpdate",
    "Schedule",
    "Status",
    "backoff",
    "build_dsn",
    "delay_warning_due",
    "expired_reply",
    "is_expired",
    "is_queue_id",
    "recover_offline",
    "release_leases",
    "report_for",
    "retry_at",
]
