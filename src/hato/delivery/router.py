"""The courier the queue runner talks to: local domains go to Maildir, the rest onward.

With no remote courier (a set-up that only receives), mail for other domains stays queued with
a temporary failure that says so.

Must not import anything of hato but model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hato.model import Courier, Outcome, QueuedMessage, QueuedRecipient, Reply, TempFailed

NO_OUTBOUND = Reply(451, "4.4.0", "Outbound delivery is not available on this server yet")


class RoutingCourier:
    def __init__(
        self, is_local: Callable[[str], bool], local: Courier, remote: Courier | None = None
    ) -> None:
        self._is_local = is_local
        self._local = local
        self._remote = remote

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        local = [r for r in recipients if self._is_local(r.address.domain)]
        remote = [r for r in recipients if not self._is_local(r.address.domain)]
        outcomes: dict[int, Outcome] = {}
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
