"""The courier the queue runner talks to: local domains go to Maildir, the rest onward.

Before either, the loop checks of every queued message (delivery/loops.py): one with too many
hops fails whole with 5.4.6, and a copy an alias of ours would forward again although the
message already carries that alias's Delivered-To fails with 5.4.6 (RFC 5321 §6.3); the queue
runner bounces both to the sender.

A copy an alias of ours forwards to another server goes out from an SRS address of the alias's
domain (directory/srs.py) when the original sender's domain is not ours: the next hop's SPF check
then sees a sender we may send for, and its bounces come back to us to be checked and reversed.
Our own bounces of that copy still go to the original sender (the queue keeps it).

With no remote courier (a set-up that only receives), mail for other domains stays queued with
a temporary failure that says so.

A local domain's mailboxes are Maildirs here, or behind an LMTP server (Dovecot) when the
domain has a `[[transport]] lmtp`: `MailboxRoutes` is the local courier that hands those over
LMTP (the outbound courier, which knows the transport) and writes the others. Either way they
are our mailboxes: the same recipients, keys and encryption at rest (docs/encryption.md).

Must not import anything of hato but model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from hato.delivery.loops import (
    DEFAULT_HOP_LIMIT,
    FORWARD_LOOP,
    MAIL_LOOP,
    TraceFields,
    forwards_again,
    is_forward,
    read_trace,
)
from hato.directory.srs import Srs
from hato.model import (
    Clock,
    Courier,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    ReversePath,
    TempFailed,
    logfmt,
)

log = logging.getLogger("hato.delivery")

NO_OUTBOUND = Reply(451, "4.4.0", "Outbound delivery is not available on this server yet")


class MailboxRoutes:
    """The local courier: each mailbox into its Maildir (`maildir`), or over LMTP (`lmtp`, the
    outbound courier) when `behind_lmtp(domain)` (RFC 2033: the LMTP server is the mailbox's
    final delivery agent)."""

    def __init__(self, maildir: Courier, lmtp: Courier, behind_lmtp: Callable[[str], bool]) -> None:
        self._maildir = maildir
        self._lmtp = lmtp
        self._behind_lmtp = behind_lmtp

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        far = [r for r in recipients if self._behind_lmtp(r.address.domain)]
        if not far:
            return list(await self._maildir.deliver(message, recipients))
        near = [r for r in recipients if not self._behind_lmtp(r.address.domain)]
        outcomes: dict[int, Outcome] = {}
        for courier, rows in ((self._maildir, near), (self._lmtp, far)):
            if rows:
                done = await courier.deliver(message, rows)
                outcomes.update(zip((r.row_id for r in rows), done, strict=True))
        return [outcomes[r.row_id] for r in recipients]


class RoutingCourier:
    def __init__(
        self,
        is_local: Callable[[str], bool],
        local: Courier,
        remote: Courier | None = None,
        *,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        srs: tuple[Srs, Clock] | None = None,
    ) -> None:
        self._is_local = is_local
        self._srs = srs
        self._local = local
        self._remote = remote
        self.hop_limit = hop_limit  # 0: no limit

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        outcomes: dict[int, Outcome] = dict(await self._loops(message, recipients))
        rest = [r for r in recipients if r.row_id not in outcomes]
        local = [r for r in rest if self._is_local(r.address.domain)]
        remote = [r for r in rest if not self._is_local(r.address.domain)]
        if local:
            outcomes.update(
                zip(
                    (r.row_id for r in local),
                    await self._local.deliver(message, local),
                    strict=True,
                )
            )
        if remote:
            if self._remote is None:
                outcomes.update((r.row_id, TempFailed(NO_OUTBOUND)) for r in remote)
            else:
                for sender, rows in self._senders(message, remote).items():
                    copy = (
                        message
                        if sender == message.mail_from
                        else replace(message, mail_from=sender)
                    )
                    done = await self._remote.deliver(copy, rows)
                    outcomes.update(zip((r.row_id for r in rows), done, strict=True))
        return [outcomes[r.row_id] for r in recipients]

    def _senders(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> dict[ReversePath, list[QueuedRecipient]]:
        """The remote recipients by envelope sender: SRS for our aliases' forwards of mail
        from other domains, the message's own sender for the rest."""
        groups: dict[ReversePath, list[QueuedRecipient]] = {}
        sender = message.mail_from
        for r in recipients:
            chosen = sender
            if (
                self._srs is not None
                and sender is not None
                and not self._is_local(sender.domain)
                and is_forward(r.address, r.original, self._is_local)
            ):
                srs, clock = self._srs
                chosen = srs.forward(sender, r.original.domain, clock.now()) or sender
            groups.setdefault(chosen, []).append(r)
        return groups

    async def _loops(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[tuple[int, Outcome]]:
        """The recipients that are part of a mail loop, each with its 5.4.6 failure."""
        try:
            if message.body is None:
                trace = await asyncio.to_thread(read_trace, message)
            else:
                trace = read_trace(message)
        except OSError:
            return []  # the courier meets the unreadable body too, and says so
        if trace.loops(self.hop_limit):
            self._log(message, trace, "hops", "*")
            return [(r.row_id, PermFailed(MAIL_LOOP)) for r in recipients]
        looped: list[tuple[int, Outcome]] = []
        for r in recipients:
            alias = forwards_again(trace.delivered_to, r.address, r.original, self._is_local)
            if alias is not None:
                self._log(message, trace, "delivered-to", alias)
                looped.append((r.row_id, PermFailed(FORWARD_LOOP)))
        return looped

    @staticmethod
    def _log(message: QueuedMessage, trace: TraceFields, reason: str, rcpt: str) -> None:
        log.warning(
            logfmt("mail-loop", id=message.queue_id, reason=reason, hops=trace.hops, rcpt=rcpt)
        )
