"""A message as the queue holds it, and the Courier seam that delivers it.

Must not import anything of hato but model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hato.model.address import Address, ReversePath
from hato.model.dsn import RecipientDsn
from hato.model.frozen import quick_init
from hato.model.outcome import Outcome


@quick_init
@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient row: `address` is where to deliver (after alias and +tag resolution);
    `original` is the RCPT TO address as the client gave it (RFC 3461 ORCPT's default)."""

    row_id: int
    address: Address
    original: Address
    attempts: int = 0
    # True when the row was found unfinished at start-up: an earlier process may have
    # delivered it and died before recording that, so a courier should check (exactly once).
    recovered: bool = False
    # RFC 3461 NOTIFY and ORCPT as the client gave them (relayed to a next hop offering DSN).
    dsn: RecipientDsn = field(default_factory=RecipientDsn)


@quick_init
@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message on disk: the body file is never rewritten; `prefix` holds the header
    lines we added (Received, Authentication-Results, ...), CRLF-terminated, to be
    written before the body (DESIGN.md: bodies are never rewritten).

    A small body is stored inline in the queue row instead of a file: then `body` holds
    its bytes and `body_path` is "". A courier reads `body` when it is not None, else the
    file at `body_path`."""

    queue_id: str
    mail_from: ReversePath
    received_at: float
    body_path: str
    size: int
    prefix: bytes = b""
    params: Mapping[str, str | None] = field(default_factory=dict)
    body: bytes | None = None


class Courier(Protocol):
    """Delivers one message to some of its recipients; one outcome per recipient, in order.

    Must not raise for a delivery problem: that is a TempFailed/PermFailed outcome.
    """

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]: ...
