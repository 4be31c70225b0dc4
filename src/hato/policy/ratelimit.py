"""Per-user sending limits, and holding an account whose sending suddenly spikes.

Theory: each authenticated user has a sliding window of one hour kept as 60 one-minute buckets
(messages, recipients); a message counts from its minute until 59 to 60 minutes later. Past
`messages_per_hour` MAIL FROM gets 451 4.7.1, past `recipients_per_hour` RCPT TO does; the
client's queue retries later (RFC 5321 §4.2.5: 451 is a transient local refusal; RFC 3463
X.7.1: delivery not authorized). Counting is per minute, so memory per user is bounded (60
buckets) whatever the limits, and no limit (0) needs no log of every message.

A spike is an absolute burst: at least `spike_recipients` recipients within the last
`spike_window` seconds (whole minutes). Chosen over "N times the usual rate" because it needs no
history, cannot be trained up slowly by an attacker, and an admin can predict it. A spike
returns a `SpikeAlert` (the caller logs ``event=sending-spike``) and, with `spike_hold`, holds
the user: everything they send gets 451 4.7.1 until `release(user)` or `hold_time` passes (0:
until released). A compromised account thus sends one burst at most, not a day of spam.

May import hato.model only. Time comes from the Clock (monotonic).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from hato.model import Clock, Reply
from hato.policy.decision import Accept, Decision, Defer

# RFC 5321 §4.2.5 451 (local error, try later) / RFC 3463 X.7.1 (not authorized).
RATE_LIMITED = Reply(451, "4.7.1", "Sending rate limit reached; try again later")
HELD = Reply(451, "4.7.1", "Sending suspended for this account; contact your administrator")

_BUCKET = 60.0  # seconds per bucket
_HOUR_BUCKETS = 60


@dataclass(frozen=True, slots=True)
class SendLimitSettings:
    messages_per_hour: int = 200  # per authenticated user; 0 = no limit
    recipients_per_hour: int = 1000  # 0 = no limit
    spike_recipients: int = 300  # recipients within spike_window that make a spike; 0 = off
    spike_window: float = 300.0  # seconds, rounded up to whole minutes, at most an hour
    spike_hold: bool = True  # hold the user on a spike (else only alert)
    hold_time: float = 86_400.0  # seconds a hold lasts; 0 = until an admin releases it
    max_users: int = 100_000  # users tracked at once (least recently active go first)

    def __post_init__(self) -> None:
        if min(self.messages_per_hour, self.recipients_per_hour, self.spike_recipients) < 0:
            raise ValueError("limits must be 0 (off) or positive")
        if not 0 < self.spike_window <= 3600 or self.hold_time < 0 or self.max_users < 1:
            raise ValueError("spike_window must be 1..3600 s, hold_time >= 0, max_users >= 1")


@dataclass(frozen=True, slots=True)
class SpikeAlert:
    """A burst from one user: log it as ``logfmt(alert.event, **alert.fields())``."""

    user: str
    recipients: int  # within `window` seconds
    messages: int
    window: float
    held: bool
    hold_time: float  # 0: until released
    event: str = "sending-spike"

    def fields(self) -> dict[str, object]:
        return {
            "user": self.user,
            "recipients": self.recipients,
            "messages": self.messages,
            "window": int(self.window),
            "held": "yes" if self.held else "no",
            "hold_time": int(self.hold_time) if self.hold_time else "until-released",
        }


class _Usage:
    """One user's buckets: [minute, messages, recipients], oldest first."""

    __slots__ = ("alerted_until", "buckets")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.alerted_until = 0.0

    def add(self, minute: int, recipients: int) -> None:
        if self.buckets and self.buckets[-1][0] == minute:
            self.buckets[-1][1] += 1
            self.buckets[-1][2] += recipients
        else:
            self.buckets.append([minute, 1, recipients])

    def totals(self, since_minute: int) -> tuple[int, int]:
        """(messages, recipients) in buckets at or after `since_minute`."""
        messages = recipients = 0
        for minute, m, r in reversed(self.buckets):
            if minute < since_minute:
                break
            messages += m
            recipients += r
        return messages, recipients

    def prune(self, oldest_minute: int) -> None:
        while self.buckets and self.buckets[0][0] < oldest_minute:
            self.buckets.popleft()


class SendLimiter:
    """Sending limits for authenticated users; one per server process.

    MAIL FROM: ``check_message(user)``; each RCPT TO: ``check_recipients(user, n)`` with n the
    message's recipients counting this one; after the message is queued (250):
    ``record(user, recipients)``, logging a returned SpikeAlert. A Defer's reply is the answer.
    """

    def __init__(self, clock: Clock, settings: SendLimitSettings | None = None) -> None:
        self._clock = clock
        self.settings = settings or SendLimitSettings()
        self._usage: OrderedDict[str, _Usage] = OrderedDict()
        self._held: dict[str, float] = {}  # user -> monotonic time the hold ends (inf: never)

    def check_message(self, user: str) -> Decision:
        key = _key(user)
        if self.held(key):
            return Defer(HELD)
        limit = self.settings.messages_per_hour
        if limit and self._hour(key)[0] >= limit:
            return Defer(RATE_LIMITED)
        return Accept()

    def check_recipients(self, user: str, count: int) -> Decision:
        key = _key(user)
        if self.held(key):
            return Defer(HELD)
        limit = self.settings.recipients_per_hour
        if limit and self._hour(key)[1] + count > limit:
            return Defer(RATE_LIMITED)
        return Accept()

    def record(self, user: str, recipients: int) -> SpikeAlert | None:
        """Count one accepted message; a SpikeAlert when this message makes a spike."""
        key, now = _key(user), self._clock.monotonic()
        minute = int(now // _BUCKET)
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = _Usage()
            if len(self._usage) > self.settings.max_users:
                self._usage.popitem(last=False)
        self._usage.move_to_end(key)
        usage.prune(minute - _HOUR_BUCKETS + 1)
        usage.add(minute, recipients)
        return self._spike(key, usage, minute, now)

    def held(self, user: str) -> bool:
        key = _key(user)
        until = self._held.get(key)
        if until is None:
            return False
        if until <= self._clock.monotonic():
            del self._held[key]
            return False
        return True

    def held_users(self) -> list[str]:
        return sorted(user for user in list(self._held) if self.held(user))

    def release(self, user: str) -> bool:
        """An admin lets the user send again (and resets their spike count); whether held."""
        key = _key(user)
        usage = self._usage.get(key)
        if usage is not None:
            usage.buckets.clear()
            usage.alerted_until = 0.0
        return self._held.pop(key, None) is not None

    def usage(self, user: str) -> tuple[int, int]:
        """(messages, recipients) in the current hour's window."""
        return self._hour(_key(user))

    def _hour(self, key: str) -> tuple[int, int]:
        usage = self._usage.get(key)
        if usage is None:
            return 0, 0
        minute = int(self._clock.monotonic() // _BUCKET)
        return usage.totals(minute - _HOUR_BUCKETS + 1)

    def _spike(self, key: str, usage: _Usage, minute: int, now: float) -> SpikeAlert | None:
        s = self.settings
        if not s.spike_recipients or now < usage.alerted_until:
            return None
        window_buckets = math.ceil(s.spike_window / _BUCKET)
        messages, recipients = usage.totals(minute - window_buckets + 1)
        if recipients < s.spike_recipients:
            return None
        usage.alerted_until = now + s.spike_window  # one alert per burst, not one per message
        if s.spike_hold:
            self._held[key] = now + s.hold_time if s.hold_time else math.inf
        return SpikeAlert(key, recipients, messages, s.spike_window, s.spike_hold, s.hold_time)


def _key(user: str) -> str:
    return user.strip().casefold()
