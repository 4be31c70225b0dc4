"""The queue's values, whatever store holds them: row states, what a runner takes and records,
what an operator sees and asks for, and the errors (see queue/protocol.py, `QueueStore`).

Must not import anything of hato but model.

These are backend-neutral: the SQLite store (queue/sqlite.py) and any other backend read and
write them, and the rooms above the queue (server, cli, boot) see only these, never a
database's own rows or errors.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hato.model.address import Address, ReversePath
from hato.model.dsn import RecipientDsn
from hato.model.message import QueuedMessage, QueuedRecipient
from hato.model.reply import Reply

# ---- errors ----


class QueueError(Exception):
    """The queue store could not do what was asked (a full disk, an I/O error, a store that
    cannot be reached); nothing of the request took effect. `errno` says why when known."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.errno = code
        self.detail = detail

    @property
    def insufficient_storage(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)

    @property
    def reply(self) -> Reply:
        """What a session answers instead of 250."""
        if self.insufficient_storage:
            # RFC 5321 §4.2.2 452 insufficient system storage; RFC 3463 §3.4 X.3.1 system full.
            return Reply(452, "4.3.1", "Insufficient system storage")
        # RFC 5321 §4.2.2 451 local error in processing; RFC 3463 §3.4 X.3.0.
        return Reply(451, "4.3.0", "Local error in processing")

    @classmethod
    def from_os(cls, exc: OSError, what: str) -> QueueError:
        return cls(exc.errno, f"{what}: {exc.strerror or exc}")


class QueueWriteError(QueueError):
    """The message (or an attempt's outcome) could not be made durable; nothing of it stays
    in the queue."""

    @classmethod
    def from_os(cls, exc: OSError, what: str) -> QueueWriteError:
        return cls(exc.errno, f"{what}: {exc.strerror or exc}")


class KeyAppeared(QueueWriteError):
    """A recipient the message was to be stored in the clear for has a key by the time of
    the commit (imported on some node while the message came): nothing was stored, and the
    client is to send again, which the key then encrypts (intake/message.py)."""

    @property
    def reply(self) -> Reply:
        # RFC 5321 §4.2.2 451 requested action aborted; RFC 3463 §3.7 X.7.5 cryptographic
        # failure (as a key under the DEFER policy: crypto/spool.py DEFER_DATA_REPLY).
        return Reply(451, "4.7.5", "Requested action aborted: try again later")


# ---- the runner's rows ----


class Status(enum.Enum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"  # kept, not tried: e.g. its body file is missing (an operator looks)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as a store commits it: one row for it, one per recipient."""

    queue_id: str
    mail_from: ReversePath
    received_at: float
    size: int
    prefix: bytes
    params: Mapping[str, str | None]
    recipients: Sequence[tuple[Address, Address, RecipientDsn]]  # (deliver-to, original, dsn)
    body: bytes | None = None  # inline body; None: the file messages/<queue_id>


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """The result of one attempt for one recipient row."""

    row_id: int
    status: Status
    attempts: int
    next_attempt: float
    last_reply: str | None
    recovered: bool = False  # the attempt's outcome is unknown (the courier raised)


@dataclass(frozen=True, slots=True)
class Pending:
    """A message and those of its recipients this node holds a lease on, ready to deliver."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]
    lease_until: float


# ---- what an operator sees and asks for ----


class AdminAction(enum.Enum):
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

    @property
    def domain_key(self) -> str | None:
        """The domain as rows are matched on it: lower case, no trailing dot."""
        return None if self.domain is None else self.domain.lower().rstrip(".")

    @property
    def sender_key(self) -> str | None:
        """The sender as stored (`<local@domain>` or `<>`), lower case."""
        if self.sender is None:
            return None
        sender = self.sender.strip()
        return (sender if sender.startswith("<") else f"<{sender}>").lower()

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
    why: str = ""  # why it is still queued (queue/admin.py `explain`)


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


@dataclass(frozen=True, slots=True)
class Returned:
    """One message's recipients an operator returns to its sender: claimed, not yet failed.
    `message` carries its inline body (read in the same snapshot as the claim)."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


@dataclass(frozen=True, slots=True)
class BounceDone:
    """What `finish_bounce` did: rows failed, messages touched, messages removed."""

    failed: int
    touched: tuple[str, ...]
    removed: tuple[str, ...]


# RFC 3463 §3.1: X.0.0 "other undefined status"; the operator gave up on the message (like
# Postfix's `postsuper -f`, "message is administratively expired").
ADMIN_BOUNCE = Reply(550, "5.0.0", "message returned by the mail administrator")
BODY_MISSING = "body file missing"  # the last reply of a row held because its body is gone
