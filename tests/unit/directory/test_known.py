"""KnownMailboxes: a row for an address with no mailbox fails (550 5.1.1), the others go on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hato.directory.known import NO_ACCOUNT, KnownMailboxes
from hato.directory.resolver import Local, Resolution, Unknown
from hato.model import Address, Delivered, Outcome, PermFailed, QueuedMessage, QueuedRecipient


class Lookup:
    def resolve(self, address: Address) -> Resolution:
        return Local((address,), ()) if address.local == "alice" else Unknown()


class FakeLocal:
    def __init__(self) -> None:
        self.given: list[Address] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        self.given += [r.address for r in recipients]
        return [Delivered("maildir") for _ in recipients]


def test_unknown_mailbox_fails_and_the_others_are_delivered() -> None:
    courier = FakeLocal()
    message = QueuedMessage("Q1", None, 0.0, "", 1, b"", {}, body=b"x")
    sales = Address("sales", "example.org")
    rows = [
        QueuedRecipient(1, Address("bob", "example.org"), sales),
        QueuedRecipient(2, Address("alice", "example.org"), sales),
    ]
    outcomes = asyncio.run(KnownMailboxes(courier, Lookup()).deliver(message, rows))
    assert outcomes == [PermFailed(NO_ACCOUNT), Delivered("maildir")]
    assert courier.given == [Address("alice", "example.org")]
