"""Encryption at rest for mail that waited in the queue while its recipient imported a key.

Theory of operation. Intake makes the key verdict when the message comes (intake/protect.py):
a recipient without a key then gets the plaintext copy, which is queued. A local copy that
waits (a milter's quarantine until `hato queue release`, a Maildir that cannot be written,
mail from hato-sendmail, which is always queued) may be delivered after its recipient has
imported a key, and `hato key encrypt-existing` only rewrites what is already in the Maildir:
delivered as it waited, it would stay readable in the mailbox for good. So `KeyedDelivery`
stands in front of the local courier of the queue runner: each row whose mailbox has a key
now, of a message that is not already encrypted to that key (its Content-Type says
multipart/encrypted or S/MIME enveloped data and its body is one encrypted message to the key,
crypto/sealed.py: an encrypted copy intake made, or mail encrypted end to end), is
delivered from a copy made by the same `protect` step every door takes: the queued message,
our header lines included, read into a sealed scratch file and encrypted per recipient into a
body that is never committed, handed to the local courier, then dropped. The key failure
policy applies as at intake: DEFER leaves the row to wait (4.7.5), PLAINTEXT delivers the
warning-headed copy. Rows without a key are delivered as they are, untouched.

Which rows have a key is asked once for all the deliveries that reach this courier in one turn
of the event loop (the queue runner starts a batch's attempts together): one `with_keys` read
(issue 16: on PostgreSQL, where "no key" is never kept, one round trip a batch instead of one a
delivery). On PostgreSQL the read runs in a worker thread, one at a time: the deliveries that
come while it runs join the next one, started when it ends (as a group commit). A read starts
after every delivery it answers has joined it, so a key committed before a delivery began is
seen; its answer serves those deliveries only, nothing is kept for later ones.

The direct delivery at intake does not need this: its copies were made by `protect` a moment
before, with the verdict of that moment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Iterator, Sequence

from hato.crypto import KeyIndex, KeyLookup, SealedScratch
from hato.crypto.encrypt import EncryptionError, stored_as_it_came
from hato.crypto.mime import encrypted_type, split_message
from hato.intake.protect import protect
from hato.model import Address, Clock, Courier, QueuedMessage, QueuedRecipient, Reply, logfmt
from hato.model.outcome import Outcome, TempFailed
from hato.queue import BodyWriter, QueueStore

log = logging.getLogger("hato.queue")

_HEAD = 64 * 1024  # octets read to find the header section's Content-Type
_CHUNK = 64 * 1024
# RFC 5321 §4.2.2 451 local error in processing; RFC 3463 §3.4 X.3.0: try again later.
UNREADABLE = Reply(451, "4.3.0", "Local error in processing")


class KeyedDelivery:
    """A `Courier` in front of the local one (see the module docstring)."""

    def __init__(
        self,
        local: Courier,
        keys: KeyIndex | None,
        queue: QueueStore,
        clock: Clock,
        *,
        in_thread: bool = False,
    ) -> None:
        """`in_thread`: read in a worker thread (the shared PostgreSQL store: a round trip)."""
        self._local = local
        self._keys = keys
        self._queue = queue
        self._clock = clock
        self._in_thread = in_thread
        # The addresses of the deliveries waiting for the next read, and its answer (None: no
        # delivery waiting); the read in flight (in_thread: one at a time).
        self._asking: tuple[set[Address], asyncio.Future[set[Address]]] | None = None
        self._reading: asyncio.Task[None] | None = None

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        keys = self._keys
        if keys is None or not recipients:
            return list(await self._local.deliver(message, recipients))
        found = await self._with_keys(keys, {r.address for r in recipients})
        keyed = [r for r in recipients if r.address in found]
        if not keyed or await asyncio.to_thread(_already_encrypted, message, keys, keyed):
            return list(await self._local.deliver(message, recipients))
        outcomes: dict[int, Outcome] = {}
        rest = [r for r in recipients if r not in keyed]
        if rest:
            done = await self._local.deliver(message, rest)
            outcomes.update(zip((r.row_id for r in rest), done, strict=True))
        outcomes.update(await self._encrypted(keys, message, keyed))
        return [outcomes[r.row_id] for r in recipients]

    async def _with_keys(self, keys: KeyIndex, addresses: set[Address]) -> set[Address]:
        """Which of `addresses` have a key: joins the next read (see the module docstring)."""
        if self._asking is None:
            self._asking = (set(), asyncio.get_running_loop().create_future())
            if self._reading is None:
                # Started once the deliveries ready to run in this turn have joined.
                asyncio.get_running_loop().call_soon(self._ask, keys)
        wanted, answer = self._asking
        wanted.update(addresses)
        # Shielded: one delivery cancelled (its attempt timed out) must not fail the others.
        return await asyncio.shield(answer) & addresses

    def _ask(self, keys: KeyIndex) -> None:
        """Start the read the deliveries so far joined (one at a time: the next waits)."""
        assert self._asking is not None
        wanted, answer = self._asking
        self._asking = None
        if not self._in_thread:
            try:
                answer.set_result(keys.with_keys(wanted))
            except Exception as exc:  # StoreError: each delivery raises it, as `get` did
                answer.set_exception(exc)
            return
        self._reading = asyncio.get_running_loop().create_task(self._read(keys, wanted, answer))

    async def _read(
        self, keys: KeyIndex, wanted: set[Address], answer: asyncio.Future[set[Address]]
    ) -> None:
        try:
            answer.set_result(await asyncio.to_thread(keys.with_keys, wanted))
        except Exception as exc:  # StoreError: each delivery raises it, as `get` did
            answer.set_exception(exc)
        except BaseException:  # cancelled (the server stops): so are the deliveries
            answer.cancel()
            if self._asking is not None:
                self._asking[1].cancel()
                self._asking = None
            raise
        finally:
            self._reading = None
            if self._asking is not None:  # deliveries came during the read: the next one
                self._ask(keys)

    async def _encrypted(
        self, keys: KeyLookup, message: QueuedMessage, rows: list[QueuedRecipient]
    ) -> dict[int, Outcome]:
        """`rows` delivered from their copies made now by `protect` (intake/protect.py)."""
        scratch = SealedScratch(self._queue.messages_dir)
        try:
            await asyncio.to_thread(_fill, scratch, message)
        except OSError as exc:
            scratch.close()
            return _all_failed(rows, UNREADABLE, message, str(exc))
        now = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        by_address = {r.address: r for r in rows}
        copies = await protect(keys, scratch, list(by_address), now, self._queue, message.queue_id)
        if isinstance(copies, Reply):  # a key under the DEFER policy failed: wait (4.7.5)
            return _all_failed(rows, copies, message, "key failure")
        outcomes: dict[int, Outcome] = {}
        try:
            for copy, dests in copies:
                mine = [by_address[d] for d in dests]
                copied = _as_queued(message, copy)
                if copied is None:
                    error = str(copy.error or "the copy was not written")
                    outcomes.update(_all_failed(mine, UNREADABLE, message, error))
                    continue
                log.info(logfmt("queued-copy-encrypted", id=message.queue_id, copy=copy.queue_id,
                                rcpt=",".join(str(d) for d in dests)))  # fmt: skip
                done = await self._local.deliver(copied, mine)
                outcomes.update(zip((r.row_id for r in mine), done, strict=True))
        finally:
            for copy, _ in copies:
                await asyncio.to_thread(copy.discard)  # never committed: dropped once delivered
        return outcomes


def _all_failed(
    rows: Sequence[QueuedRecipient], reply: Reply, message: QueuedMessage, detail: str
) -> dict[int, Outcome]:
    log.warning(logfmt("queued-copy-not-encrypted", id=message.queue_id, error=detail,
                       reply=reply))  # fmt: skip
    return {r.row_id: TempFailed(reply) for r in rows}


def _as_queued(message: QueuedMessage, copy: BodyWriter) -> QueuedMessage | None:
    """`message` with `copy` as its body (our header lines are inside it now); None after a
    write error."""
    if copy.inline:
        data = copy.peek_inline()
        return _with_body(message, "", len(data), data)
    if not copy.written_out():
        return None
    return _with_body(message, copy.path, copy.size, None)


def _with_body(message: QueuedMessage, path: str, size: int, data: bytes | None) -> QueuedMessage:
    return QueuedMessage(
        message.queue_id,
        message.mail_from,
        message.received_at,
        path,
        size,
        b"",
        message.params,
        data,
    )


def _already_encrypted(
    message: QueuedMessage, keys: KeyLookup, rows: Sequence[QueuedRecipient]
) -> bool:
    """Whether the queued body is encrypted to the key of every keyed row (a copy intake
    encrypted, or mail encrypted end to end): it says so (RFC 1847 §2.2 multipart/encrypted,
    RFC 8551 §3.2.2 enveloped data) and its body is one encrypted message to each key
    (crypto/sealed.py: a label on plaintext is not enough). Blocks (reads the file, may ask
    the key store): run it in a worker thread."""
    if not _says_encrypted(message):
        return False
    source = functools.partial(_chunks, message)
    try:
        for row in rows:
            key = keys.get(row.address)
            if key is None or not stored_as_it_came(source, key):
                return False
    except OSError:
        return True  # the local courier reports a body it cannot read, as for any row
    except EncryptionError:
        return False  # a header section too large: `protect` applies the key's policy
    return True


def _chunks(message: QueuedMessage) -> Iterator[bytes]:
    """The queued body (without our header lines), in chunks."""
    if message.body is not None:
        yield message.body
        return
    with open(message.body_path, "rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk


def _says_encrypted(message: QueuedMessage) -> bool:
    if message.body is not None:
        head = message.body[:_HEAD]
    else:
        try:
            with open(message.body_path, "rb") as file:
                head = file.read(_HEAD)
        except OSError:
            return True  # the local courier reports a body it cannot read, as for any row
    return encrypted_type(split_message(head)) is True


def _fill(scratch: SealedScratch, message: QueuedMessage) -> None:
    """The queued message, our header lines first, into `scratch` (blocks: a worker thread)."""
    scratch.write(message.prefix)
    if message.body is not None:
        scratch.write(message.body)
        return
    with open(message.body_path, "rb") as file:
        while chunk := file.read(_CHUNK):
            scratch.write(chunk)
