"""DirectDelivery: which recipients go into their Maildir before the 250, and what is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from hato.delivery import MaildirCourier
from hato.intake.direct import DirectDelivery, Row, SpooledBody
from hato.model import (
    Address,
    Delivered,
    Notify,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    Reply,
    TempFailed,
)
from kit.clock import FakeClock

BODY = b"Subject: hi\r\n\r\nHello.\r\n"
PREFIX = b"Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
FULL = Reply(452, "4.2.2", "Mailbox full, try again later")


class ScriptedCourier:
    """Answers each recipient from a table by address; records every call."""

    def __init__(self, answers: dict[str, Outcome]) -> None:
        self.answers = answers
        self.calls: list[tuple[QueuedMessage, list[QueuedRecipient]]] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        self.calls.append((message, list(recipients)))
        return [self.answers.get(str(r.address), Delivered("maildir")) for r in recipients]


def row(text: str, notify: frozenset[Notify] | None = None) -> Row:
    address = Address.parse(text)
    return (address, address, RecipientDsn(notify=notify))


def deliver(direct: DirectDelivery, rows: list[Row]) -> list[Row]:
    return asyncio.run(
        direct.deliver("Q1", mail_from=None, body=BODY, prefix=PREFIX, params={}, rows=rows)
    )


def is_local(domain: str) -> bool:
    return domain == "example.org"


def test_local_recipients_are_delivered_and_only_failures_are_left_for_the_queue() -> None:
    courier = ScriptedCourier({"bob@example.org": TempFailed(FULL)})
    direct = DirectDelivery(courier, is_local, FakeClock(1767225600.5, 1.0))
    rows = [
        row("alice@example.org"),
        row("bob@example.org"),  # its mailbox is full: the queue retries it
        row("erin@example.org"),
    ]

    left = deliver(direct, rows)

    assert left == [rows[1]]
    (message, recipients), *more = courier.calls
    assert not more
    assert [str(r.address) for r in recipients] == [
        "alice@example.org",
        "bob@example.org",
        "erin@example.org",
    ]
    # Negative row numbers: never a queue row's, so a fallback copy cannot share a file name.
    assert [r.row_id for r in recipients] == [-1, -2, -3]
    assert message.body == BODY and message.prefix == PREFIX and message.size == len(BODY)
    assert message.queue_id == "Q1" and message.received_at == FakeClock(1767225600.5, 1.0).now()


def test_a_message_with_any_other_recipient_is_queued_whole() -> None:
    # Delivering part of it and then failing to queue the rest would make the client's retry
    # deliver that part twice.
    courier = ScriptedCourier({})
    direct = DirectDelivery(courier, is_local, FakeClock(1767225600.5, 1.0))
    for other in (
        row("carol@remote.test"),  # another server's: the queue and the MX route
        row("dave@example.org", frozenset({Notify.SUCCESS})),  # the runner writes that DSN
    ):
        rows = [row("alice@example.org"), other]
        assert deliver(direct, rows) == rows
    assert courier.calls == []


def test_a_permanent_failure_is_left_for_the_queue_to_bounce() -> None:
    courier = ScriptedCourier({"alice@example.org": PermFailed(Reply(550, "5.1.1", "No"))})
    rows = [row("alice@example.org")]
    assert deliver(DirectDelivery(courier, is_local, FakeClock(1767225600.5, 1.0)), rows) == rows


def test_nothing_local_means_no_courier_call() -> None:
    courier = ScriptedCourier({})
    rows = [row("carol@remote.test")]
    assert deliver(DirectDelivery(courier, is_local, FakeClock(1767225600.5, 1.0)), rows) == rows
    assert courier.calls == []


def test_with_the_real_maildir_courier_the_file_is_there_when_deliver_returns(
    tmp_path: Path,
) -> None:
    maildir = MaildirCourier(
        tmp_path / "mail", "mx.example.org", clock=FakeClock(1767225600.5, 1.0)
    )
    try:
        left = deliver(
            DirectDelivery(maildir, is_local, FakeClock(1767225600.5, 1.0)),
            [row("alice@example.org")],
        )
    finally:
        maildir.close()
    assert left == []
    (stored,) = (tmp_path / "mail" / "example.org" / "alice" / "new").iterdir()
    assert "QQ1R-1." in stored.name
    data = stored.read_bytes()
    assert data.endswith(PREFIX + BODY)
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.org\r\n")


def test_a_spooled_body_is_handed_over_as_its_file_not_read_into_memory(tmp_path: Path) -> None:
    courier = ScriptedCourier({})
    direct = DirectDelivery(courier, is_local, FakeClock(1767225600.5, 1.0))
    spooled = SpooledBody(str(tmp_path / "Q1"), 300_000)
    left = asyncio.run(
        direct.deliver(
            "Q1", mail_from=None, body=spooled, prefix=PREFIX, params={},
            rows=[row("alice@example.org")],
        )
    )  # fmt: skip
    assert left == []
    ((message, _),) = courier.calls
    assert message.body is None and message.body_path == spooled.path
    assert message.size == 300_000
