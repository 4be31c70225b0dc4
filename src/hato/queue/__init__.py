"""The durable queue: spool files, the SQLite store with group commit, the retry schedule,
and the runner that hands messages to a Courier (see shared/DESIGN.md, room `queue`).

May import model and smtp only.
"""

from hato.queue.body import BodyWriter, QueueWriteError
from hato.queue.ids import QueueIdGenerator, Rng, is_queue_id
from hato.queue.runner import QueueRunner
from hato.queue.schedule import Schedule, backoff, expired_reply, is_expired, retry_at
from hato.queue.sqlite import Pending, RowUpdate, Status
from hato.queue.store import DEFAULT_MIN_FREE, Queue

__all__ = [
    "DEFAULT_MIN_FREE",
    "BodyWriter",
    "Pending",
    "Queue",
    "QueueIdGenerator",
    "QueueRunner",
    "QueueWriteError",
    "Rng",
    "RowUpdate",
    "Schedule",
    "Status",
    "backoff",
    "expired_reply",
    "is_expired",
    "is_queue_id",
    "retry_at",
]
