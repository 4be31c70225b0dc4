"""The last check before a local mailbox is written: is the address still somebody's?

Theory of operation. The Maildir courier makes a mailbox for any address it is given (the
resolver decided at RCPT time). Two kinds of rows reach it for an address that has no mailbox:
an alias target without an account (``sales = ["alice", "bob"]`` before ``bob`` is added: the
resolver lists it in `Local.unresolved`, and the session queues it with the others), and a
mailbox whose account was removed while its mail was queued. `KnownMailboxes` asks the resolver
again for each row and fails those it now calls `Unknown` permanently (550 5.1.1), with a log
line; the queue turns that into a bounce to the sender (RFC 3464), so such a copy is never lost
without a word and no directory is made for a user who does not exist.

Must not import anything of hato but model and this room.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from hato.directory.resolver import Resolution, Unknown
from hato.model import (
    Address,
    Courier,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    logfmt,
    moment,
)

log = logging.getLogger("hato.delivery")

# RFC 3463 §3.2 X.1.1: bad destination mailbox address.
NO_ACCOUNT = Reply(550, "5.1.1", "no such mailbox: the address has no account")


class Lookup(Protocol):
    def resolve(self, address: Address) -> Resolution: ...


class KnownMailboxes:
    """A `Courier` in front of the local one: rows for unknown mailboxes fail, not vanish."""

    def __init__(self, local: Courier, lookup: Lookup) -> None:
        self._local = local
        self._lookup = lookup

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        # One step (model/moment.py): the user database's stamp is read once for every row.
        opened = moment.begin()
        try:
            known = [
                r for r in recipients if not isinstance(self._lookup.resolve(r.address), Unknown)
            ]
        finally:
            if opened:
                moment.end()
        if len(known) == len(recipients):
            return list(await self._local.deliver(message, recipients))
        outcomes: dict[int, Outcome] = {}
        if known:
            done = await self._local.deliver(message, known)
            outcomes.update(zip((r.row_id for r in known), done, strict=True))
        for rcpt in recipients:
            if rcpt.row_id not in outcomes:
                log.warning(
                    logfmt(
                        "mailbox-unknown",
                        id=message.queue_id,
                        to=f"<{rcpt.address}>",
                        orcpt=f"<{rcpt.original}>",
                        detail="no account for this address; the sender gets a bounce",
                    )
                )
                outcomes[rcpt.row_id] = PermFailed(NO_ACCOUNT)
        return [outcomes[r.row_id] for r in recipients]
