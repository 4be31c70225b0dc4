"""The routing courier: local recipients to the local courier, others held back visibly."""

import asyncio
from collections.abc import Sequence

from hato.delivery.router import NO_OUTBOUND, MailboxRoutes, RoutingCourier
from hato.model import Address, Delivered, Outcome, QueuedMessage, QueuedRecipient, TempFailed


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Address] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        self.seen.extend(r.address for r in recipients)
        return [Delivered(r.address.local) for r in recipients]


def _rcpt(row: int, text: str) -> QueuedRecipient:
    address = Address.parse(text)
    return QueuedRecipient(row, address, address)


def test_local_and_remote_recipients_are_split_and_answered_in_order() -> None:
    local = Recorder()
    courier = RoutingCourier(lambda d: d == "example.org", local)
    message = QueuedMessage("Q1", None, 0.0, "/nonexistent", 0)
    rcpts = [_rcpt(1, "x@remote.test"), _rcpt(2, "a@example.org"), _rcpt(3, "b@example.org")]
    outcomes = asyncio.run(courier.deliver(message, rcpts))
    assert local.seen == [Address("a", "example.org"), Address("b", "example.org")]
    assert outcomes == [TempFailed(NO_OUTBOUND), Delivered("a"), Delivered("b")]


def test_remote_courier_used_when_present() -> None:
    local, remote = Recorder(), Recorder()
    courier = RoutingCourier(lambda d: False, local, remote)
    message = QueuedMessage("Q2", None, 0.0, "/nonexistent", 0)
    outcomes = asyncio.run(courier.deliver(message, [_rcpt(1, "x@remote.test")]))
    assert remote.seen == [Address("x", "remote.test")] and not local.seen
    assert outcomes == [Delivered("x")]


def test_mailboxes_behind_lmtp_go_to_the_lmtp_courier_in_order() -> None:
    maildir, lmtp = Recorder(), Recorder()
    courier = MailboxRoutes(maildir, lmtp, lambda d: d == "lmtp.test")
    message = QueuedMessage("Q3", None, 0.0, "/nonexistent", 0)
    rcpts = [_rcpt(1, "a@lmtp.test"), _rcpt(2, "b@example.org"), _rcpt(3, "c@lmtp.test")]
    outcomes = asyncio.run(courier.deliver(message, rcpts))
    assert maildir.seen == [Address("b", "example.org")]
    assert lmtp.seen == [Address("a", "lmtp.test"), Address("c", "lmtp.test")]
    assert outcomes == [Delivered("a"), Delivered("b"), Delivered("c")]
