"""One observer of deliveries (server/deliverycount.py): each recipient's outcome is counted
once, for /metrics and for `hato status`'s last hour."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

from hato.model import (
    Address,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
)
from hato.server.deliverycount import DeliveryTally, OutcomeCounter
from hato.server.metrics import Metrics, Transport
from kit.clock import FakeClock

DEFER = TempFailed(Reply(451, "4.3.0", "try later"))
BOUNCE = PermFailed(Reply(550, "5.1.1", "no such user"))


def value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name} {labels}: not in the scrape")


class Scripted:
    """A courier answering the outcomes it was given."""

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes = outcomes

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        return self.outcomes


def rcpt(text: str, row_id: int) -> QueuedRecipient:
    local, domain = text.split("@")
    return QueuedRecipient(row_id, Address(local, domain), Address(local, domain))


def test_deliveries_are_counted_once_for_metrics_and_the_last_hour() -> None:
    metrics, clock = Metrics(), FakeClock(wall=1003.0)
    last_hour = OutcomeCounter(clock.monotonic)
    tally = DeliveryTally(metrics, last_hour, clock, lambda domain: domain == "example.org")
    message = QueuedMessage(
        queue_id="01ABC", mail_from=None, received_at=1000.0, body_path="", size=10
    )
    recipients = [
        rcpt("alice@example.org", 1),
        rcpt("bob@example.org", 2),
        rcpt("carol@remote.test", 3),
        rcpt("dave@remote.test", 4),
        rcpt("erin@remote.test", 5),
    ]
    outcomes: list[Outcome] = [Delivered(), BOUNCE, Delivered(), DEFER, DEFER]
    courier = tally.courier(Scripted(outcomes))
    assert asyncio.run(courier.deliver(message, recipients)) == outcomes
    metrics.delivery(Delivered(), Transport.REMOTE, 7200.0)
    metrics.delivery(Delivered(), Transport.LOCAL, None)  # counted, no latency observed
    got = metrics.exposition().decode()

    def deliveries(result: str, transport: str) -> float:
        return value(got, "hato_deliveries_total", result=result, transport=transport)

    assert deliveries("delivered", "local") == 2
    assert deliveries("bounced", "local") == 1
    assert deliveries("delivered", "remote") == 2
    assert deliveries("deferred", "remote") == 2
    assert deliveries("bounced", "remote") == 0
    latency = "hato_delivery_latency_seconds"
    assert value(got, f"{latency}_count", transport="local") == 1
    assert value(got, f"{latency}_sum", transport="local") == 3.0
    assert value(got, f"{latency}_bucket", transport="local", le="2.5") == 0
    assert value(got, f"{latency}_bucket", transport="local", le="5.0") == 1
    assert value(got, f"{latency}_count", transport="remote") == 2
    assert value(got, f"{latency}_bucket", transport="remote", le="3600.0") == 1
    assert value(got, f"{latency}_bucket", transport="remote", le="14400.0") == 2
    # `hato status`: the same attempt, counted once, in the last hour's figures.
    assert last_hour.counts() == {"delivered": 2, "failed": 1, "deferred": 2}
    clock.advance(3601)
    assert last_hour.counts() == {}
