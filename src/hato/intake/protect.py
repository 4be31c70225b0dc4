"""Encryption at rest in the session (issue 6): which recipients have keys, and queueing one
copy per distinct content so a keyed user's plaintext never reaches the disk.

Theory: at RCPT the session asks `recipient_keys` for each final mailbox; a key that cannot be
used with the DEFER policy answers 450 4.7.5 for that recipient. If any accepted recipient has a
key, the message is received into a `SealedScratch` (a nameless file, encrypted under a key held
only in memory) instead of a spool body. After DATA, `protect` runs
`hato.crypto.protect_stream` from a worker thread (one, ENCRYPT_THREADS: encryption is CPU
work, and the event loop must not wait for it): the plaintext copy for unkeyed recipients
and one encrypted copy per keyed recipient are streamed from the scratch file into queue
bodies, each committed as its own queue entry. A message of FAR_FROM octets or more is
encrypted by the helper process (crypto/helper.py), a second thread only waiting for it: in
a thread the encryption held the GIL, and the event loop waited for it (issue 12 item 3).
Memory per message is a few chunks whatever its size (issue 12: a 40 MB message held in
memory and split into lines took 2.6 GB).

One way in (issue 11): this is the one step every door takes for a keyed recipient. The SMTP
session calls `recipient_keys` at RCPT and `protect` after DATA; local submission
(server/localsubmit.py: hato-sendmail on the control or submission socket, and the maildrop
pickup) makes the same verdict before the first octet of the message is written and calls the
same `protect`; the notices the server makes (DSNs, queue/bounce.py) are queued through
`KeyedCommitter`, which the composition root gives the queue runner, and which puts the notice
through the same sealed scratch file and `protect`.

A key imported while a message comes (after the RCPT verdict found none, so its octets were
received in the clear) is seen at the commit: `sealed_if_keyed` moves the message into a
sealed scratch file, the plaintext body is discarded before anything stores it, and `protect`
makes its copies as for a recipient keyed at RCPT (so does a key that expired under the
PLAINTEXT policy: its copy gets the warning field).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hato.crypto import (
    DEFER_DATA_REPLY,
    FailurePolicy,
    KeyLookup,
    SealedScratch,
    protect_stream,
    split_for_encryption,
)
from hato.crypto.helper import EncryptHelper, HelperFailed, protect_far
from hato.model import Address, Reply, logfmt
from hato.model.storeerror import StoreUnavailable
from hato.queue import BodyWriter, QueueStore, QueueWriteError

log = logging.getLogger("hato.smtpd")

# One thread for the messages encrypted here: the encryption is mostly Python and C calls
# that keep the GIL, so a second thread encrypted no faster (4 x 20 MB: 5.0-5.3 s with one or
# two) but made the event loop wait twice as long for the GIL (mean 5-8 ms against 12 ms;
# issue 12 item 3). One more that only waits for the helper process (which takes one message
# at a time), so that small keyed mail does not wait behind a big message.
ENCRYPT_THREADS = 1
_pools: dict[bool, ThreadPoolExecutor] = {}
# From this size a message is encrypted in the helper process: its bodies are files anyway
# (over 64 KiB), and handing it over costs about a millisecond (file creates, two messages).
FAR_FROM = 256 * 1024
HELPER = EncryptHelper()


def _pool(far: bool) -> ThreadPoolExecutor:
    if far not in _pools:
        name = "hato-encrypt-far" if far else "hato-encrypt"
        _pools[far] = ThreadPoolExecutor(ENCRYPT_THREADS, thread_name_prefix=name)
    return _pools[far]


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    keyed: bool  # at least one of the mailboxes has a usable key
    defer_reason: str = ""  # a key cannot be used and its owner's policy is DEFER


# The two verdicts without a deferral, made once (a frozen dataclass costs a call per field
# to make; issue 15: one a message at RCPT).
_KEYED, _UNKEYED = KeyVerdict(True), KeyVerdict(False)


def recipient_keys(keys: KeyLookup, mailboxes: Sequence[Address], now: dt.datetime) -> KeyVerdict:
    keyed = False
    for mailbox in mailboxes:
        key = keys.get(mailbox)
        if key is None:
            continue
        if key.expired(now):
            if keys.policy(mailbox) is FailurePolicy.DEFER:
                return KeyVerdict(keyed, f"{mailbox}: key {key.fingerprint} expired")
            continue  # PLAINTEXT policy: stored in the clear with a warning header
        keyed = True
    return _KEYED if keyed else _UNKEYED


async def protect(
    keys: KeyLookup,
    scratch: SealedScratch,
    dests: Sequence[Address],
    now: dt.datetime,
    queue: QueueStore,
    session: str,
) -> list[tuple[BodyWriter, tuple[Address, ...]]] | Reply:
    """The bodies to commit with their recipients, or the reply instead of 250: 451 4.7.5 when
    a key failed under the DEFER policy, 451/452 when the scratch file could not be written or
    read. The scratch file is closed either way."""
    plan = split_for_encryption(dests, keys, now)
    # Queue ids come from the loop's thread: every body the worker may need is made here
    # (the plaintext copy, one per keyed recipient, the warning-headed copy).
    spare = [queue.new_body() for _ in range(len(plan.encrypted) + 2)]
    spare.reverse()
    loop = asyncio.get_running_loop()
    far = scratch.size >= FAR_FROM
    if far:
        work = functools.partial(protect_far, HELPER, scratch, dests, keys, now, spare.pop)
    else:
        work = functools.partial(protect_stream, scratch.chunks, dests, keys, now, spare.pop)
    try:
        done = await loop.run_in_executor(_pool(far), work)
    except OSError as exc:
        error = QueueWriteError.from_os(exc, exc.filename or "message scratch file")
        log.warning(logfmt("queue-write-failed", session=session, error=error, reply=error.reply))
        return error.reply
    except HelperFailed as exc:
        # Nothing was stored (the bodies are gone) and the scratch file is still ours: the
        # client is told to send again (RFC 5321 §4.2.2 451 local error in processing).
        failed = QueueWriteError(None, str(exc))
        log.error(logfmt("encrypt-helper-failed", session=session, error=exc, reply=failed.reply))
        return failed.reply
    finally:
        scratch.close()
        for unused in spare:
            unused.discard()
    for failure in (*done.deferred, *done.in_clear):
        action = "deferred" if failure in done.deferred else "stored-in-clear"
        log.warning(
            logfmt(
                "key-failure",
                session=session,
                rcpt=failure.recipient,
                detail=failure.reason,
                action=action,
            )
        )
    if done.deferred:
        for copy in done.copies:
            copy.body.discard()
        return DEFER_DATA_REPLY
    return [(copy.body, copy.recipients) for copy in done.copies]


def keyed_copies_needed(
    keys: KeyLookup | None, mailboxes: Sequence[Address], now: dt.datetime
) -> KeyVerdict:
    """The SMTP session's RCPT verdict for the other doors (local submission, DSNs)."""
    return _UNKEYED if keys is None else recipient_keys(keys, mailboxes, now)


async def seal_and_protect(
    keys: KeyLookup,
    data: bytes,
    dests: Sequence[Address],
    now: dt.datetime,
    queue: QueueStore,
    session: str,
) -> list[tuple[BodyWriter, tuple[Address, ...]]] | Reply:
    """`protect` for a message made in memory (a DSN): through the same sealed scratch file."""
    scratch = SealedScratch(queue.messages_dir)
    scratch.write(data)
    return await protect(keys, scratch, dests, now, queue, session)


def any_key(keys: KeyLookup, mailboxes: Sequence[Address]) -> bool:
    """Whether one of `mailboxes` has a key now, usable or not (one read for all of them when
    the store can: `KeyIndex.with_keys`)."""
    if not mailboxes:
        return False
    # Asked as an attribute: isinstance against the runtime Protocol costs ~8 µs, every message.
    with_keys: Callable[[Sequence[Address]], set[Address]] | None
    with_keys = getattr(keys, "with_keys", None)
    if with_keys is not None:
        return bool(with_keys(mailboxes))
    return any(keys.get(mailbox) is not None for mailbox in mailboxes)


async def sealed_if_keyed(
    keys: KeyLookup,
    body: BodyWriter,
    mailboxes: Sequence[Address],
    messages_dir: str,
    session: str,
) -> BodyWriter | SealedScratch | Reply:
    """`body` (a message received in the clear: no recipient had a key at RCPT), or, when one
    of `mailboxes` has a key by now, the message moved into a sealed scratch file for `protect`
    (`body` is then discarded, before anything stored it); or the reply instead of 250, with
    both discarded: 451 4.3.0 when the key store could not be asked, 451/452 when a file
    failed."""
    try:
        if not any_key(keys, mailboxes):
            return body
    except StoreUnavailable as exc:  # never a 250 for mail that might be stored in the clear
        body.discard()
        log.warning(logfmt("store-unavailable", session=session, error=str(exc)))
        return exc.reply
    log.info(logfmt("key-since-rcpt", session=session, id=body.queue_id))
    kept = body.peek_inline() if body.inline else None
    try:
        # A spooled message is read back from its file, and a big file's unlink may wait for
        # the journal: not on the event loop.
        return await asyncio.to_thread(resealed, messages_dir, body, kept)
    except OSError as exc:
        error = QueueWriteError.from_os(exc, exc.filename or "message scratch file")
        log.warning(logfmt("queue-write-failed", session=session, error=error, reply=error.reply))
        return error.reply


def resealed(directory: str, body: BodyWriter, kept: bytes | None = None) -> SealedScratch:
    """The message of `body` (received in the clear) moved into a new sealed scratch file, and
    `body` discarded, whatever happens; `kept`: its octets already in memory, else read back
    from its file. Raises the OSError of either file (the scratch file is then closed).
    Blocks: call it in a thread."""
    scratch = SealedScratch(directory)
    try:
        for chunk in (kept,) if kept is not None else body.read_back():
            scratch.write(chunk)
        scratch.sealed()  # raises the scratch file's write error, if any
    except BaseException:
        scratch.close()
        raise
    finally:
        body.discard()
    return scratch
