"""Typed outcomes of one delivery attempt for one recipient.

Must not import anything of hato.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hato.model.reply import Reply


class Handoff(enum.Enum):
    """Where a delivered message went, which decides who reports a success (RFC 3461 §5.2)."""

    MAILBOX = "mailbox"  # RFC 3461 §5.2.3: final delivery (Maildir, LMTP): we say "delivered"
    RELAYED = "relayed"  # RFC 3461 §5.2.2: to a server without DSN: we say "relayed"
    # RFC 3461 §5.2.1: to a server offering DSN that got NOTIFY/ORCPT: it reports, we do not.
    RELAYED_DSN = "relayed-dsn"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The next hop (or the mailbox) has taken responsibility for the message."""

    detail: str = ""
    handoff: Handoff = Handoff.MAILBOX


@dataclass(frozen=True, slots=True)
class TempFailed:
    """Try again later; `reply` says why (kept on the recipient row).

    `retry_after` (seconds) is the courier's hint that the cause is likely to pass soon
    (e.g. a full disk that an admin frees): the queue then tries again after at most that
    long instead of its normal backoff. None: the normal backoff."""

    reply: Reply
    retry_after: float | None = None
    remote_mta: str | None = None  # the host that gave `reply`; None: we made it ourselves


@dataclass(frozen=True, slots=True)
class PermFailed:
    """Give up and bounce; `reply` says why."""

    reply: Reply
    remote_mta: str | None = None  # the host that gave `reply`; None: we made it ourselves


Outcome = Delivered | TempFailed | PermFailed
