"""Typed outcomes of one delivery attempt for one recipient.

Must not import anything of hato.
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.model.reply import Reply


@dataclass(frozen=True, slots=True)
class Delivered:
    """The next hop (or the mailbox) has taken responsibility for the message."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class TempFailed:
    """Try again later; `reply` says why (kept on the recipient row).

    `retry_after` (seconds) is the courier's hint that the cause is likely to pass soon
    (e.g. a full disk that an admin frees): the queue then tries again after at most that
    long instead of its normal backoff. None: the normal backoff."""

    reply: Reply
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class PermFailed:
    """Give up and bounce; `reply` says why."""

    reply: Reply


Outcome = Delivered | TempFailed | PermFailed
