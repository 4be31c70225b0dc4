"""Connection reuse (RSET between messages, idle timeout, messages per connection) and
concurrency limits per destination and in total."""

from __future__ import annotations

import asyncio
import random

from outbound_fakes import FakeNet, Peer

from dnsserver import FakeResolver, FakeValue
from hato.delivery.outbound import OutboundCourier
from hato.delivery.outbound_pool import Limiter
from hato.delivery.transport import OutboundSettings
from hato.model import Address, Delivered, Handoff, Outcome, QueuedMessage, QueuedRecipient
from hato.model.dns import MxRecord, RdType
from kit.clock import FakeClock

DNS: dict[tuple[str, RdType], FakeValue] = {
    ("example.com", RdType.MX): [MxRecord(10, "mx.example.com")],
    ("mx.example.com", RdType.A): ["192.0.2.1"],
}


def message(n: int) -> QueuedMessage:
    return QueuedMessage(f"Q{n}", Address("a", "us.test"), 0.0, "", 4, body=b"Hi\r\n")


def rcpt(n: int) -> list[QueuedRecipient]:
    address = Address(f"u{n}", "example.com")
    return [QueuedRecipient(n, address, address)]


def setup(**settings: float) -> tuple[OutboundCourier, FakeNet, FakeClock]:
    net, clock = FakeNet({"192.0.2.1": Peer()}), FakeClock(1000.0, 1000.0)
    courier = OutboundCourier(
        OutboundSettings("mail.us.test", **settings),  # type: ignore[arg-type]
        FakeResolver(DNS),
        clock=clock,
        rng=random.Random(1),
        opener=net.open,
    )
    return courier, net, clock


def test_second_message_reuses_the_connection_after_rset() -> None:
    courier, net, _clock = setup()

    async def scenario() -> None:
        for n in range(3):
            assert await courier.deliver(message(n), rcpt(n)) == [
                Delivered("250 ok", Handoff.RELAYED)
            ]
        assert courier.pool.idle_count == 1
        await courier.aclose()

    asyncio.run(scenario())
    (session,) = net.sessions
    assert session.resets == 2 and len(net.sent) == 3 and session.closed


def test_a_reused_connection_found_dead_hands_the_message_to_a_new_one() -> None:
    """The peer dropped the idle connection: the RSET pipelined with MAIL finds it gone
    (stale: nothing delivered), and the same attempt delivers on a new connection."""
    net, clock = FakeNet({"192.0.2.1": Peer(closes_idle=True)}), FakeClock(1000.0, 1000.0)
    courier = OutboundCourier(
        OutboundSettings("mail.us.test"),
        FakeResolver(DNS),
        clock=clock,
        rng=random.Random(1),
        opener=net.open,
    )

    async def scenario() -> list[list[Outcome]]:
        return [await courier.deliver(message(n), rcpt(n)) for n in range(3)]

    outcomes = asyncio.run(scenario())
    assert outcomes == [[Delivered("250 ok", Handoff.RELAYED)]] * 3
    assert len(net.sent) == 3 and len(net.sessions) == 3
    assert [s.resets for s in net.sessions] == [1, 1, 0]  # the new ones are not reset
    assert [s.closed for s in net.sessions] == [True, True, False]


def test_max_messages_per_connection() -> None:
    courier, net, _clock = setup(max_messages_per_connection=2)

    async def scenario() -> None:
        for n in range(5):
            await courier.deliver(message(n), rcpt(n))

    asyncio.run(scenario())
    assert len(net.sessions) == 3  # 2 + 2 + 1
    assert [s.closed for s in net.sessions] == [True, True, False]


def test_idle_connections_expire() -> None:
    courier, net, clock = setup(idle_timeout=5.0)

    async def scenario() -> None:
        await courier.deliver(message(1), rcpt(1))
        clock.advance(6)
        await courier.deliver(message(2), rcpt(2))
        clock.advance(6)
        await courier.pool.sweep()

    asyncio.run(scenario())
    assert len(net.sessions) == 2 and all(s.closed for s in net.sessions)
    assert courier.pool.idle_count == 0


def test_limiter_bounds_per_destination_and_total() -> None:
    limiter = Limiter(per_destination=2, total=3)
    peak: dict[str, int] = {}
    total_peak = 0
    running = 0

    async def use(destination: str) -> None:
        nonlocal running, total_peak
        async with limiter.slot(destination):
            running += 1
            total_peak = max(total_peak, running)
            peak[destination] = max(peak.get(destination, 0), limiter.in_use(destination))
            await asyncio.sleep(0.01)
            running -= 1

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tasks:
            for i in range(12):
                tasks.create_task(use("a" if i % 3 else "b"))

    asyncio.run(scenario())
    assert peak["a"] == 2 and peak["b"] <= 2 and total_peak == 3
    assert limiter.in_use("a") == 0


def test_concurrent_messages_to_one_domain_respect_the_limit() -> None:
    courier, net, _clock = setup(max_connections_per_domain=2)

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tasks:
            for n in range(6):
                tasks.create_task(courier.deliver(message(n), rcpt(n)))

    asyncio.run(scenario())
    assert len(net.sent) == 6
    assert len(net.sessions) <= 2
