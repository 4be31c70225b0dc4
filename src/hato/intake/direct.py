"""Local mail delivered during the SMTP transaction, before the 250: no queue row at all.

Theory of operation. A message for our own mailboxes does not need the queue: once its file is
in the Maildir (written, fsynced, renamed into new/, new/ fsynced) it is where it is going, and
more durable than a queue row. So after DATA the session hands a message whose recipients can
all go straight to a Maildir to the local courier (the same MaildirCourier the queue runner
uses, with its batching: many sessions share one syncfs); those whose delivery failed just now
(a full mailbox, a disk error) are queued, and the queue retries them. A message with any other
recipient (on another server, or asking for a success DSN, which the runner writes) is queued
whole: were part of it delivered and the queue commit of the rest then failed, the client's 4xx
and retry would deliver that part twice. The session answers 250 only when every recipient is
either in its Maildir or in the queue (DESIGN.md: 250 means durable; see docs/architecture.md
for this refinement of the rule).

The crash window is the queue's: a crash after the rename and before the client reads the 250
leaves a delivered message the client will send again, as a crash after the queue commit does.

A small body is handed over from memory; a bigger one (64 KiB and more, spooled while it came)
from its spool file, written out but not fsynced (`SpooledBody`): the courier streams it into
each Maildir and fsyncs those copies, so a message delivered here never has its spool file
fsynced, queued and copied again by the runner; the file is removed once nothing is left to
queue (after a crash before that, the queue's start-up removes it as an orphan).

Names: the Maildir file name carries the queue id and a row number; direct copies use negative
row numbers (-1, -2, ...), which no queue row has, so a recipient that falls back to the queue
can never be mistaken for one delivered here.

Imports nothing of hato but model: the courier and the rows come in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hato.model import (
    Address,
    Clock,
    Courier,
    Delivered,
    Notify,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    ReversePath,
    logfmt,
)
from hato.queue import HOLD_PARAM

log = logging.getLogger("hato.queue")

Row = tuple[Address, Address, RecipientDsn]  # deliver-to, original RCPT TO, its DSN request


@dataclass(frozen=True, slots=True)
class SpooledBody:
    """A body too big to keep in memory: its spool file, all of it written (not fsynced)."""

    path: str
    size: int


class DirectDelivery:
    """Delivers the local recipients of a just-received message (see the module docstring).

    `courier` is the local (Maildir) courier; `is_local(domain)` says which domains it serves,
    as the queue's router decides it."""

    def __init__(self, courier: Courier, is_local: Callable[[str], bool], clock: Clock) -> None:
        self._courier = courier
        self._is_local = is_local
        self._clock = clock

    def eligible(self, dest: Address, dsn: RecipientDsn) -> bool:
        # RFC 3461 §4.1 NOTIFY=SUCCESS: the queue runner writes success DSNs; leave those to it.
        return self._is_local(dest.domain) and not dsn.wants(Notify.SUCCESS)

    async def deliver(
        self,
        queue_id: str,
        *,
        mail_from: ReversePath,
        body: bytes | SpooledBody,
        prefix: bytes,
        params: Mapping[str, str | None],
        rows: Sequence[Row],
    ) -> list[Row]:
        """Deliver the message now if every recipient can have it so; returns the rows still
        to be queued, in order (all of them when one cannot)."""
        if HOLD_PARAM in params or not all(self.eligible(dest, dsn) for dest, _, dsn in rows):
            # A held message (a milter's quarantine) is queued held, delivered only on release.
            return list(rows)
        if isinstance(body, SpooledBody):  # the courier streams it from the file
            path, size, inline = body.path, body.size, None
        else:
            path, size, inline = "", len(body), body
        message = QueuedMessage(
            queue_id=queue_id,
            mail_from=mail_from,
            received_at=self._clock.now(),
            body_path=path,
            size=size,
            prefix=prefix,
            params=dict(params),
            body=inline,
        )
        recipients = [
            QueuedRecipient(row_id=-(n + 1), address=dest, original=original, dsn=dsn)
            for n, (dest, original, dsn) in enumerate(rows)
        ]
        outcomes = await self._courier.deliver(message, recipients)
        left: list[Row] = []
        for row, rcpt, outcome in zip(rows, recipients, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                log.info(
                    logfmt(
                        "delivered",
                        id=queue_id,
                        to=f"<{rcpt.address}>",
                        attempts=1,
                        detail=outcome.detail or None,
                        path="direct",
                    )
                )
            else:  # the queue takes it over and retries (or bounces) it like any other row
                left.append(row)
                log.info(
                    logfmt(
                        "direct-failed", id=queue_id, to=f"<{rcpt.address}>", reply=outcome.reply
                    )
                )
        return left
