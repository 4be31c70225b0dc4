"""The courier the queue runner talks to: local domains go to Maildir, the rest onward.

Before either, the loop checks of every queued message (delivery/loops.py): one with too many
hops fails whole with 5.4.6, and a copy an alias of ours would forward again although the
message already carries that alias's Delivered-To fails with 5.4.6 (RFC 5321 §6.3); the queue
runner bounces both to the sender.

With no remote courier (a set-up that only receives), mail for other domains stays queued with
a temporary failure that says so.

Must not import anything of hato but model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from hato.delivery.loops import (
    DEFAULT_HOP_LIMIT,
    FORWARD_LOOP,
    MAIL_LOOP,
    TraceFields,
    is_forward,
    read_trace,
)
from hato.model import (
    Courier,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
    logfmt,
)

log = logging.getLogger("hato.delivery")

NO_OUTBOUND = Reply(451, "4.4.0", "Outbound delivery is not available on this server yet")


class RoutingCourier:
    def __init__(
        self,
        is_local: Callable[[str], bool],
        local: Courier,
        remote: Courier | None = None,
        *,
        hop_limit: int = DEFAULT_HOP_LIMIT,
    ) -> None:
        self._is_local = is_local
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
                done = await self._remote.deliver(message, remote)
                outcomes.update(zip((r.row_id for r in remote), done, strict=True))
        return [outcomes[r.row_id] for r in recipients]

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
            alias = f"{r.original.local}@{r.original.domain}".lower()
            if alias in trace.delivered_to and is_forward(r.address, r.original, self._is_local):
                self._log(message, trace, "delivered-to", alias)
                looped.append((r.row_id, PermFailed(FORWARD_LOOP)))
        return looped

    @staticmethod
    def _log(message: QueuedMessage, trace: TraceFields, reason: str, rcpt: str) -> None:
        log.warning(
            logfmt("mail-loop", id=message.queue_id, reason=reason, hops=trace.hops, rcpt=rcpt)
        )
