"""What deliveries gave, counted once for everyone who shows it (issue 11: one observer, where
a delivery used to climb through two counting wrappers).

`ObservedCourier` wraps the courier the runner and direct delivery call; after each
`deliver` it hands the recipients and their outcomes to its `DeliveryTally`, which counts each
recipient once, in both places that show deliveries: /metrics (`hato_deliveries` by result and
transport, and `hato_delivery_latency_seconds` for a delivered one: server/metrics.py) and
`hato status`'s last hour (`OutcomeCounter`: delivered, deferred, failed, in minute buckets,
served by the control socket).

May import model and server.metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import assert_never

from hato.model import (
    Clock,
    Courier,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    TempFailed,
)
from hato.server.metrics import Metrics, Transport


class OutcomeCounter:
    """Recipient outcomes (delivered, deferred, failed) of the last hour, in minute buckets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: int = 60) -> None:
        self._clock = clock
        self._window = window  # minutes
        self._buckets: dict[int, dict[str, int]] = {}

    def add(self, kind: str, count: int = 1) -> None:
        minute = int(self._clock() // 60)
        bucket = self._buckets.setdefault(minute, {})
        bucket[kind] = bucket.get(kind, 0) + count
        if len(self._buckets) > self._window + 1:
            self._prune(minute)

    def _prune(self, minute: int) -> None:
        for old in [m for m in self._buckets if m <= minute - self._window]:
            del self._buckets[old]

    def counts(self) -> dict[str, int]:
        self._prune(int(self._clock() // 60))
        out: dict[str, int] = {}
        for bucket in self._buckets.values():
            for kind, count in bucket.items():
                out[kind] = out.get(kind, 0) + count
        return out


class DeliveryTally:
    """The one observer of deliveries: each recipient's outcome, for /metrics and the last
    hour. `is_local(domain)` tells a mailbox from another server; `clock` is the wall clock
    (a message's `received_at` is), for the latency from arrival."""

    def __init__(
        self,
        metrics: Metrics,
        last_hour: OutcomeCounter,
        clock: Clock,
        is_local: Callable[[str], bool],
    ) -> None:
        self.metrics = metrics
        self.last_hour = last_hour
        self._clock = clock
        self._is_local = is_local
        self._local = metrics.deliveries_of(Transport.LOCAL)
        self._remote = metrics.deliveries_of(Transport.REMOTE)

    def observe(
        self,
        message: QueuedMessage,
        recipients: Sequence[QueuedRecipient],
        outcomes: Sequence[Outcome],
    ) -> None:
        latency = self._clock.now() - message.received_at
        for recipient, outcome in zip(recipients, outcomes, strict=False):
            local = self._is_local(recipient.address.domain)
            (self._local if local else self._remote).count(outcome, latency)
            match outcome:
                case Delivered():
                    self.last_hour.add("delivered")
                case TempFailed():
                    self.last_hour.add("deferred")
                case PermFailed():
                    self.last_hour.add("failed")
                case _:
                    assert_never(outcome)

    def courier(self, inner: Courier) -> ObservedCourier:
        """`inner`, observed by this tally."""
        return ObservedCourier(inner, self)


class ObservedCourier:
    """A courier whose every `deliver` is counted by a `DeliveryTally`."""

    def __init__(self, inner: Courier, tally: DeliveryTally) -> None:
        self._inner = inner
        self._tally = tally

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        outcomes = await self._inner.deliver(message, recipients)
        self._tally.observe(message, recipients, outcomes)
        return outcomes
