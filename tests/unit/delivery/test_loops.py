"""Loop detection: the streaming hop count and the router's 5.4.6 failures."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hato.delivery.loops import (
    FORWARD_LOOP,
    MAIL_LOOP,
    TraceFields,
    delivered_to_fields,
    read_trace,
)
from hato.delivery.router import RoutingCourier
from hato.model import Address, Delivered, Outcome, PermFailed, QueuedMessage, QueuedRecipient

HEADER = (
    b"Received: from a by b; Mon, 7 Dec 2026 01:00:00 +0000\r\n"
    b"RECEIVED : from b\r\n\tby c; Mon, 7 Dec 2026 01:00:01 +0000\r\n"
    b"Delivered-To: List <List@Example.org>\r\n"
    b"Delivered-To:\r\n folded@example.net\r\n"
    b"X-Received: not a hop\r\n"
    b"Subject: Received: not a hop either\r\n"
    b"\r\n"
    b"Received: in the body\r\n"
    b"Delivered-To: body@example.org\r\n"
)


def _trace(chunks: Sequence[bytes]) -> TraceFields:
    trace = TraceFields()
    for chunk in chunks:
        trace.feed(chunk)
    trace.finish()
    return trace


def test_received_and_delivered_to_fields_are_hops_until_the_header_ends() -> None:
    trace = _trace([HEADER])
    assert trace.hops == 4
    assert trace.delivered_to == {"list@example.org", "folded@example.net"}
    assert trace.loops(4) and not trace.loops(5) and not trace.loops(0)


@given(st.lists(st.integers(min_value=0, max_value=len(HEADER)), max_size=12))
def test_any_chunking_counts_the_same(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(HEADER)]
    chunks = [HEADER[a:b] for a, b in itertools.pairwise(points)]
    trace = _trace(chunks)
    assert (trace.hops, trace.delivered_to) == (4, {"list@example.org", "folded@example.net"})


def test_a_header_without_body_and_bare_lf_lines() -> None:
    assert _trace([b"Received: x\nReceived: y\nDelivered-To: a@b.example"]).hops == 3
    assert _trace([b"Delivered-To: a@b.example"]).delivered_to == {"a@b.example"}


def test_delivered_to_only_for_aliases_forwarding_elsewhere() -> None:
    local = {"example.org"}.__contains__
    rows = [
        (Address("bob", "remote.test"), Address("Team", "example.org")),  # forward
        (Address("amy", "remote.test"), Address("team", "example.org")),  # same alias again
        (Address("alice", "example.org"), Address("sales", "example.org")),  # local alias
        (Address("x", "remote.test"), Address("x", "remote.test")),  # plain relay
    ]
    assert delivered_to_fields(rows, local) == b"Delivered-To: team@example.org\r\n"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Address] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        self.seen.extend(r.address for r in recipients)
        return [Delivered() for _ in recipients]


def _message(tmp_path: Path, header: bytes) -> QueuedMessage:
    body = tmp_path / "body"
    body.write_bytes(header + b"\r\nbody\r\n")
    return QueuedMessage("Q1", None, 0.0, str(body), body.stat().st_size)


def test_router_fails_every_recipient_of_a_message_with_too_many_hops(tmp_path: Path) -> None:
    local, remote = Recorder(), Recorder()
    courier = RoutingCourier(lambda d: d == "example.org", local, remote, hop_limit=10)
    message = _message(tmp_path, b"Received: x\r\n" * 10)
    rows = [
        QueuedRecipient(1, Address("a", "example.org"), Address("a", "example.org")),
        QueuedRecipient(2, Address("x", "remote.test"), Address("x", "remote.test")),
    ]
    assert asyncio.run(courier.deliver(message, rows)) == [PermFailed(MAIL_LOOP)] * 2
    assert MAIL_LOOP.code == 554 and MAIL_LOOP.enhanced == "5.4.6"
    assert not local.seen and not remote.seen
    assert read_trace(message).hops == 10


def test_router_fails_only_the_forward_whose_alias_delivered_it_before(tmp_path: Path) -> None:
    local, remote = Recorder(), Recorder()
    courier = RoutingCourier(lambda d: d == "example.org", local, remote)
    message = _message(tmp_path, b"Delivered-To: loop@example.org\r\n")
    rows = [
        QueuedRecipient(1, Address("x", "remote.test"), Address("loop", "example.org")),
        QueuedRecipient(2, Address("y", "remote.test"), Address("other", "example.org")),
        QueuedRecipient(3, Address("loop", "example.org"), Address("loop", "example.org")),
    ]
    outcomes = asyncio.run(courier.deliver(message, rows))
    assert outcomes == [PermFailed(FORWARD_LOOP), Delivered(), Delivered()]
    assert remote.seen == [Address("y", "remote.test")]
    assert local.seen == [Address("loop", "example.org")]
