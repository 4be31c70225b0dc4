"""The last end-of-message steps of the pipeline, whatever the door: encryption of the keyed
copies, then each copy into our own Maildirs now or into the queue (DESIGN.md: 250 means
durable).

Theory of operation. The message has been received (into a queue body, or into a sealed
scratch file when a recipient has a key: intake/protect.py) and judged (headers, the
authentication checks, rspamd and milters, then, last, the DKIM signature or ARC seal over
what they left: intake/finish.py; by the door that has them). The signature is made on the
plaintext before anything is encrypted here: it goes out with the plaintext copy of the
unkeyed (outgoing) recipients, and inside the encrypted copies of the keyed ones. `commit`
then makes the copies to store: the body itself for everyone, or the plaintext copy for the
unkeyed recipients and one encrypted copy per keyed recipient. Each copy gets its stored
prefix (RFC 9228 Delivered-To for the aliases that forward it, the door's added header lines,
then its Received line, which names the copy's queue id; for a message with a keyed
recipient the door's added lines go inside, in front of the message that is encrypted) and
is delivered into its Maildirs at once when every recipient of it can have it so
(intake/direct.py), else committed to the queue. The door answers 250 only when this
returned the queue ids.

A message received in the clear (no recipient had a key at RCPT) has its local mailboxes'
keys asked again at the commit (a key imported meanwhile is honoured: intake/protect.py
`sealed_if_keyed`). Where the queue's commit can ask them itself (the shared PostgreSQL
store, whose `keys` table it shares: the door's `rcpt_keys` is set) and the copy is not
delivered into the Maildirs before the queue, they are asked there instead, in the commit's
own transaction (`unkeyed`: one more statement in the commit's round trip, no round trip of
its own); a key found then stores nothing of the message, which is taken again from a sealed
scratch file, as if the key had been seen at RCPT (issue 16). Either way the check also
covers a "no key" the RCPT verdict took from memory (crypto/keystore_pg.py KeptKeys).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from hato.crypto import SealedScratch
from hato.crypto.keystore import canonical
from hato.delivery.loops import delivered_to_fields
from hato.intake.context import IntakeContext
from hato.intake.direct import SpooledBody
from hato.intake.protect import protect, resealed, sealed_if_keyed
from hato.intake.recipients import now_utc
from hato.intake.transaction import Transaction
from hato.model import Address, Reply, ReversePath, logfmt
from hato.model.queuestore import KeyAppeared
from hato.queue import BodyWriter, QueueWriteError

log = logging.getLogger("hato.smtpd")

Copies = list[tuple[BodyWriter, tuple[Address, ...]]]


async def copies_of(
    ctx: IntakeContext, body: BodyWriter | SealedScratch, dests: list[Address], session: str
) -> Copies | Reply:
    """What to store: the streamed body for everyone, or (issue 6) the plaintext copy for
    recipients without a key and one encrypted copy per keyed recipient; or the reply instead
    of 250 (a key failed under the "defer" policy: 451 4.7.5; the scratch file failed)."""
    if not isinstance(body, SealedScratch):
        return [(body, tuple(dests))]
    assert ctx.keys is not None
    return await protect(ctx.keys, body, dests, now_utc(ctx), ctx.queue, session)


async def commit(
    ctx: IntakeContext,
    tx: Transaction,
    body: BodyWriter | SealedScratch,
    *,
    mail_from: ReversePath,
    added: bytes,
    params: dict[str, str | None],
    trace: Callable[[str], bytes],
    session: str,
    direct: bool = True,
) -> list[str] | Reply:
    """Store the message for `tx.recipients`: the queue ids, or the reply instead of 250 when
    nothing was stored (see the module docstring). `added` are the door's header lines,
    `trace(queue_id)` the copy's Received line; `direct` lets local copies skip the queue.
    Raises QueueWriteError when a copy could not be queued (the copies after it are
    discarded; those before it are stored, as a client's retry would store them again)."""
    unkeyed: list[str] = []  # asked by the queue's commit (see the module docstring)
    if isinstance(body, BodyWriter) and ctx.keys is not None:
        # Issue 6: a key imported while the message came (after RCPT found none) is honoured
        # too; the plaintext body is dropped before anything stores it (intake/protect.py).
        mailboxes = [d for d in tx.dests() if ctx.resolver.is_local_domain(d.domain)]
        if ctx.rcpt_keys is not None and not (direct and ctx.direct is not None):
            unkeyed = [canonical(mailbox) for mailbox in mailboxes]
        else:
            moved = await sealed_if_keyed(
                ctx.keys, body, mailboxes, ctx.queue.messages_dir, session
            )
            if isinstance(moved, Reply):
                return moved
            body = moved
    if isinstance(body, SealedScratch) and added:
        # Issue 6: what the checks and filters added (rspamd's fields, a milter's, which may
        # repeat what the message says) is encrypted with it, in its protected header
        # section (RFC 9788); only the trace fields below stay outside (docs/encryption.md).
        body.prepend(added)
        added = b""
    copies = await copies_of(ctx, body, tx.dests(), session)
    if isinstance(copies, Reply):
        return copies
    forwarded = delivered_to_fields(tx.recipients, ctx.resolver.is_local_domain)
    ids: list[str] = []
    for number, (copy, dests) in enumerate(copies):
        rows = tx.rows(dests)
        # RFC 8601 §5 / RFC 6376 §5.6: our headers go on top, as a stored prefix; RFC 9228
        # Delivered-To for the aliases that forward it (delivery/loops.py).
        prefix = forwarded + added + trace(copy.queue_id)
        # `unkeyed`: a plain body, the one copy (the commit takes an inline body: kept).
        kept = copy.peek_inline() if unkeyed and copy.inline else None
        if direct and ctx.direct is not None and (source := _direct_body(copy)) is not None:
            # Our own mailboxes get it now; only the rest is queued (intake/direct.py).
            rows = await ctx.direct.deliver(
                copy.queue_id,
                mail_from=mail_from,
                body=source,
                prefix=prefix,
                params=params,
                rows=rows,
            )
            if not rows:
                if isinstance(source, SpooledBody):
                    # Unlinking a big file can wait for a journal commit: not on the loop.
                    await asyncio.to_thread(copy.discard)
                else:
                    copy.discard()
                ids.append(copy.queue_id)
                continue
        try:
            ids.append(
                await ctx.queue.commit(
                    copy,
                    mail_from=mail_from,
                    recipients=rows,
                    prefix=prefix,
                    params=params,
                    unkeyed=unkeyed,
                )
            )
        except KeyAppeared:  # nothing stored (the only copy): sealed, keys asked afresh
            return await _sealed_again(
                ctx, tx, copy, kept, mail_from=mail_from, added=added, params=params,
                trace=trace, session=session, direct=direct,
            )  # fmt: skip
        except QueueWriteError:
            for rest, _ in copies[number + 1 :]:
                rest.discard()
            raise
    return ids


async def _sealed_again(
    ctx: IntakeContext,
    tx: Transaction,
    copy: BodyWriter,
    kept: bytes | None,
    **how: Any,
) -> list[str] | Reply:
    """A mailbox has a key by the commit: the message again, from a sealed scratch file, as
    if its key had been seen at RCPT (`protect` asks every key afresh); `kept`: the inline
    body the refused commit took, else the body's file."""
    log.info(logfmt("key-since-rcpt", session=how["session"], id=copy.queue_id))
    try:
        scratch = await asyncio.to_thread(resealed, ctx.queue.messages_dir, copy, kept)
    except OSError as exc:
        return QueueWriteError.from_os(exc, "message scratch file").reply
    return await commit(ctx, tx, scratch, **how)


def _direct_body(copy: BodyWriter) -> bytes | SpooledBody | None:
    """What direct delivery reads the copy from: the bytes of a small body, or the spool file
    of a big one (streamed into each Maildir, never held in memory); None after a write
    error, which the queue commit reports (451/452)."""
    if copy.inline:
        return copy.peek_inline()
    return SpooledBody(copy.path, copy.size) if copy.written_out() else None
