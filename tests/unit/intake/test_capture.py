"""What DATA keeps for the checks (intake/capture.py) and the ordered, bounded Lane that hashes
a large body in threads (authcheck/offload.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from dnsserver import FakeResolver
from hato.authcheck import offload
from hato.authcheck.bodyhash import BodyHash, SignatureBodies
from hato.authcheck.offload import Lane, WorkerPool
from hato.intake.capture import LargeMessage, MessageCapture
from hato.intake.inbound import DMARC_DEFER, InboundChecker, InboundVerdict
from hato.model import Address
from hato.model.dns import RdType
from kit.clock import FakeClock

T = TypeVar("T")


SIGNED_HEADER = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=bank.test; s=s;\r\n"
    b"\th=from; bh=AAAA; b=AAAA\r\n"
    b"From: <ceo@bank.test>\r\n\r\n"
)


def _feed(capture: MessageCapture, message: bytes, step: int = 4096) -> None:
    for at in range(0, len(message), step):
        capture.feed(message[at : at + step])


def test_a_small_message_is_kept_whole() -> None:
    capture = MessageCapture(WorkerPool(), limit=1000)
    _feed(capture, SIGNED_HEADER + b"hello\r\n", step=7)
    assert capture.result() == SIGNED_HEADER + b"hello\r\n"


def test_past_the_limit_the_signer_gets_nothing() -> None:
    capture = MessageCapture(None, limit=1000)
    _feed(capture, SIGNED_HEADER + b"x" * 998 + b"\r\n")
    assert capture.result() is None


def test_past_the_limit_the_checks_get_the_header_and_the_body_hash() -> None:
    body = b"line  of\ttext \r\n" * 50_000 + b"\r\n\r\n"

    async def run() -> tuple[bytes, dict[int, bytes]]:
        capture = MessageCapture(WorkerPool(), limit=64 * 1024)
        _feed(capture, SIGNED_HEADER + body, step=1000)
        large = capture.result()
        assert isinstance(large, LargeMessage)
        return large.header, await large.digests()

    header, digests = asyncio.run(run())
    expected = BodyHash(True, "sha256", None)
    expected.update(body)
    assert header == SIGNED_HEADER
    assert digests == {0: expected.digest()}


def test_an_unsigned_large_message_keeps_only_its_header() -> None:
    async def run() -> LargeMessage:
        capture = MessageCapture(WorkerPool(), limit=1000)
        _feed(capture, b"From: <a@b.test>\r\n\r\n" + b"y" * 5000)
        large = capture.result()
        assert isinstance(large, LargeMessage)
        assert await large.digests() == {}
        return large

    large = asyncio.run(run())
    assert not large.bodies and large.header == b"From: <a@b.test>\r\n\r\n"


@pytest.mark.parametrize("backlog", [offload.LANE_BACKLOG, 1])
def test_a_lane_feeds_its_sink_in_order(monkeypatch: pytest.MonkeyPatch, backlog: int) -> None:
    # backlog 1: every batch finds the pool behind, so feed() does the work itself, in order.
    monkeypatch.setattr(offload, "LANE_BATCH", 1000)
    monkeypatch.setattr(offload, "LANE_BACKLOG", backlog)
    seen = hashlib.sha256()
    chunks = [bytes([i % 251]) * (i % 700 + 1) for i in range(3000)]

    async def run() -> None:
        lane = Lane(seen.update, WorkerPool())
        for chunk in chunks:
            lane.feed(chunk)
        await lane.finish()

    asyncio.run(run())
    assert seen.digest() == hashlib.sha256(b"".join(chunks)).digest()


def test_a_lane_hands_its_sinks_failure_to_finish() -> None:
    def sink(data: bytes) -> None:
        raise ValueError("broken sink")

    async def run() -> None:
        lane = Lane(sink, WorkerPool())
        lane.feed(b"x" * 10)
        await lane.finish()

    with pytest.raises(ValueError, match="broken sink"):
        asyncio.run(run())


def test_an_abandoned_lane_takes_nothing_more() -> None:
    got: list[bytes] = []

    async def run() -> None:
        lane = Lane(got.append, WorkerPool())
        lane.abandon()
        lane.feed(b"x" * (2 * offload.LANE_BATCH))
        await lane.finish()

    asyncio.run(run())
    assert got == []


def test_signature_bodies_share_one_hash_per_kind() -> None:
    header = SIGNED_HEADER.replace(b"From:", SIGNED_HEADER.split(b"From:")[0] + b"From:")
    bodies = SignatureBodies(header)
    bodies.update(b"a\r\n")
    digests = bodies.digests()
    assert set(digests) == {0, 1} and digests[0] == digests[1]


def _stuck(work: Callable[[], T]) -> Awaitable[T]:
    """An Offload whose work never runs: a body hash that does not end within the budget."""
    return asyncio.get_running_loop().create_future()


def test_a_large_spoof_whose_body_hash_runs_out_of_time_is_deferred_not_delivered() -> None:
    # RFC 7489 §11.2 / §6.6.2: DKIM temperror and SPF fail leave DMARC temperror; what
    # p=reject would refuse is deferred (451 4.4.3), never delivered as if it had passed.
    resolver = FakeResolver(
        {
            ("bank.test", RdType.TXT): ["v=spf1 ip4:192.0.2.9 -all"],
            ("_dmarc.bank.test", RdType.TXT): ["v=DMARC1; p=reject"],
        }
    )
    checker = InboundChecker(
        resolver, authserv_id="mx.test", clock=FakeClock(1_700_000_000.0, 0.0), budget=4.0
    )
    header = SIGNED_HEADER.replace(b"d=bank.test", b"d=other.test")

    async def run() -> InboundVerdict:
        capture = MessageCapture(_stuck, limit=100)
        _feed(capture, header + b"padding\r\n" * 100)
        large = capture.result()
        assert isinstance(large, LargeMessage)
        async with asyncio.timeout(30):
            return await checker.check(
                client_ip="192.0.2.1",
                helo="mail.bank.test",
                mail_from=Address.parse("ceo@bank.test"),
                message=large,
            )

    verdict = asyncio.run(run())
    assert verdict.refuse == DMARC_DEFER, verdict.header.decode()
    text = verdict.header.decode()
    assert "dkim=temperror" in text and "dmarc=temperror" in text and "spf=fail" in text
