"""When to try a deferred recipient again, and when to give up: pure functions.

Must not import anything of hato but model.

Like Postfix: the first retry after `first_retry` (minimal_backoff_time, 300 s), the delay
doubling with every attempt up to `max_backoff` (maximal_backoff_time, 4000 s ≈ 67 min),
each delay spread by ±`jitter` so that a burst of deferrals does not come back as one
burst, and the message given up after `max_lifetime` (maximal_queue_lifetime, 5 days).
A message still not delivered after `delay_warning` (Postfix's delay_warning_time, off there
by default; `[queue] delay_warning_time` here, on by default: 4 hours, as sendmail's
Timeout.queuewarn) gets one "delayed" notice to its sender (RFC 3464 action=delayed, when
RFC 3461 §4.1's NOTIFY asks for it); None turns the warnings off.
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.model import Reply
from hato.queue.ids import Rng


@dataclass(frozen=True, slots=True)
class Schedule:
    first_retry: float = 300.0
    max_backoff: float = 4000.0
    # RFC 5321 §4.5.4.1: the give-up time generally needs to be at least 4-5 days.
    max_lifetime: float = 5 * 86400.0
    jitter: float = 0.1
    delay_warning: float | None = 4 * 3600.0

    def __post_init__(self) -> None:
        if self.first_retry <= 0 or self.max_backoff < self.first_retry:
            raise ValueError("need 0 < first_retry <= max_backoff")
        if self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.delay_warning is not None and self.delay_warning <= 0:
            raise ValueError("delay_warning must be positive (or None: no warnings)")


def backoff(schedule: Schedule, attempts: int, rng: Rng) -> float:
    """The delay after the `attempts`-th failed attempt (1 for the first failure)."""
    if attempts < 1:
        raise ValueError("attempts counts from 1")
    # Cap the exponent before raising 2 to it: a row with thousands of attempts stays finite.
    doublings = min(attempts - 1, 64)
    base = min(schedule.first_retry * 2.0**doublings, schedule.max_backoff)
    return base * (1.0 + schedule.jitter * (2.0 * rng.random() - 1.0))


def is_expired(schedule: Schedule, *, received_at: float, now: float) -> bool:
    return now - received_at >= schedule.max_lifetime


def delay_warning_due(schedule: Schedule, *, received_at: float, now: float) -> bool:
    """Whether a message deferred now is old enough for its delay warning (RFC 3461 §5.2.5)."""
    warn = schedule.delay_warning
    return warn is not None and now - received_at >= warn


def retry_at(
    schedule: Schedule, *, attempts: int, received_at: float, now: float, rng: Rng
) -> float | None:
    """When to try again after the `attempts`-th temporary failure; None: give up (expired).

    The last try is pulled in to the expiry time, so a message is tried once at its deadline
    rather than dropped up to `max_backoff` early or late.
    """
    if is_expired(schedule, received_at=received_at, now=now):
        return None
    return min(now + backoff(schedule, attempts, rng), received_at + schedule.max_lifetime)


def expired_reply(last: Reply | None) -> Reply:
    """The reply recorded on a recipient given up for age.

    RFC 3463 §3.5: X.4.7 "Delivery time expired"; it keeps the persistent-transient class 4
    (as Postfix and sendmail report it) and the code of the last temporary reply.
    """
    code = last.code if last is not None and last.is_transient else 451
    return Reply(code, "4.4.7", "delivery time expired")
