"""Fakes shared by the queue tests: a clock, a fixed random source, a scripted courier."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import TypeVar

from hato.model import (
    Address,
    Delivered,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
)
from hato.queue import Queue
from kit.clock import FakeClock

T = TypeVar("T")

MIB = 1024 * 1024


class FixedRng:
    """random() is always `value`; getrandbits counts up (deterministic ids)."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.bits = 0

    def random(self) -> float:
        return self.value

    def getrandbits(self, k: int, /) -> int:
        self.bits += 1
        return self.bits % (1 << k)


def addr(text: str) -> Address:
    return Address.parse(text)


def rcpts(*texts: str) -> list[tuple[Address, Address]]:
    return [(addr(t), addr(t)) for t in texts]


async def open_queue(root: Path, clock: FakeClock, **kwargs: object) -> Queue:
    return await Queue.open(
        root,
        clock=clock,
        node_id="node-a",
        rng=FixedRng(),
        free_space=lambda _path: 10_000 * MIB,
        **kwargs,  # type: ignore[arg-type]
    )


async def commit_message(
    queue: Queue,
    body: bytes = b"Subject: hi\r\n\r\nhello\r\n",
    *,
    to: Sequence[str] = ("bob@example.org",),
    mail_from: str | None = "alice@example.com",
    prefix: bytes = b"Received: by test\r\n",
) -> str:
    writer = queue.new_body()
    writer.write(body)
    return await queue.commit(
        writer,
        mail_from=addr(mail_from) if mail_from is not None else None,
        recipients=rcpts(*to),
        prefix=prefix,
        params={"BODY": "8BITMIME"},
    )


@dataclass
class Call:
    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]


@dataclass
class ScriptedCourier:
    """Answers each recipient from `script` (by address text; Delivered by default)."""

    script: dict[str, Outcome | Exception] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, deliveries wait for it
    active: int = 0
    max_active: int = 0

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        self.calls.append(Call(message, tuple(recipients)))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            outcomes: list[Outcome] = []
            for rcpt in recipients:
                answer = self.script.get(str(rcpt.address), Delivered("250 ok"))
                if isinstance(answer, Exception):
                    raise answer
                outcomes.append(answer)
            return outcomes
        finally:
            self.active -= 1


async def eventually(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Wait (real time) until `predicate()` holds; fail the test if it never does. It holds
    within milliseconds here; the bound is for a loaded CI machine (SQLite commits that wait
    on a busy disk, an event loop that gets the CPU late), where 5 s was short."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await main()

    return asyncio.run(wrapper())


@dataclass
class ParsedDsn:
    """A DSN as Python's `email` package reads it (RFC 6522 multipart/report)."""

    report: Message
    human: Message
    per_message: Message
    recipients: list[Message]
    returned: Message


def _parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, Message)]


def parse_dsn(data: bytes) -> ParsedDsn:
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    human, status, returned = _parts(report)
    assert status.get_content_type() == "message/delivery-status"
    blocks = _parts(status)
    return ParsedDsn(report, human, blocks[0], blocks[1:], returned)
