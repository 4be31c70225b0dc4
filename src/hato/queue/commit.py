"""What every backend's `commit` checks and builds before it writes (QueueStore.commit).

Must not import anything of hato but model and this room.

The preconditions are the same whatever holds the queue: at least one recipient, a body that
was written without error (else it is discarded, the refusal is logged and QueueWriteError
raised: the client gets 451/452, never 250), then the body is sealed and the message built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from hato.model import Clock, RecipientDsn, ReversePath, logfmt
from hato.model.queuestore import NewMessage, QueueWriteError
from hato.queue.body import BodyWriter
from hato.queue.protocol import RecipientSpec

log = logging.getLogger("hato.queue")


def log_refused(queue_id: str, error: QueueWriteError) -> None:
    """The message could not be made durable (the session answers 451/452)."""
    log.warning(logfmt("queue-write-failed", id=queue_id, errno=error.errno, error=error.detail))


def sealed_message(
    body: BodyWriter,
    *,
    mail_from: ReversePath,
    recipients: Sequence[RecipientSpec],
    prefix: bytes,
    params: Mapping[str, str | None],
    clock: Clock,
) -> NewMessage:
    """The message to commit, its body sealed (an inline body taken out of the writer);
    raises ValueError or QueueWriteError (the body discarded) if it cannot be committed."""
    if not recipients:
        # RFC 5321 §3.3: DATA needs at least one accepted RCPT; a session bug if not.
        raise ValueError("a message needs at least one recipient")
    if body.error is not None:
        error = QueueWriteError.from_os(body.error, "write body")
        body.discard()
        log_refused(body.queue_id, error)
        raise error
    body.mark_sealed()
    return NewMessage(
        queue_id=body.queue_id,
        mail_from=mail_from,
        received_at=clock.now(),
        size=body.size,
        prefix=prefix,
        params=dict(params),
        recipients=tuple((r[0], r[1], r[2] if len(r) == 3 else RecipientDsn()) for r in recipients),
        body=body.take_inline() if body.inline else None,
    )
