"""The door of the notices the server makes itself (DSNs, queue/bounce.py): the queue's
`Committer`, which the composition root gives the queue runner (and `hato queue bounce` with
the server stopped).

A notice goes through the same RCPT and end-of-message steps as mail from a client: its
recipient (the original sender) is resolved by the address book, so a notice to an alias goes
to the mailboxes behind it, and the key verdict is made on those mailboxes; a keyed user's
copy is encrypted by the same `protect` (intake/protect.py) and never stored in the clear. The
key failure policy applies as to any mail: DEFER queues nothing now (the runner tries the
notice again at the next attempt), PLAINTEXT stores the warning-headed copy. A notice is
always queued (never delivered before its commit: the runner's attempt writes it).

A notice about our own user's mail (`ours`: authenticated or local submission) goes through
`Door.NOTICE`, DKIM-signed; one about mail from outside through `Door.OUTSIDE_NOTICE`,
unsigned: it returns content a stranger chose (queue/bounce.py "Signing", RFC 6376 §8).
"""

from __future__ import annotations

from hato.crypto import DEFER_REPLY, KeyLookup, SealedScratch
from hato.directory.resolver import Local, Resolution
from hato.intake.context import IntakeContext, Recipients
from hato.intake.finish import Door, Submitted, end_of_message
from hato.intake.recipients import add_recipient
from hato.intake.signing import OutboundSigner
from hato.intake.transaction import NO_DSN, Transaction
from hato.model import Address, Clock, Reply, Role
from hato.queue import BodyWriter, QueueStore, QueueWriteError
from hato.smtp import ServerSettings


class _AsGiven:
    """The address book when none is at hand (`hato queue bounce` offline): every address is
    its own mailbox, as the queue row names it."""

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return Local((address,), ())

    def owns(self, user: Address, address: Address) -> bool:
        return False

    def is_local_domain(self, domain: str) -> bool:
        return False


class KeyedCommitter:
    """The queue's `Committer` (queue/bounce.py): a notice through the pipeline (see the module
    docstring). Without `resolver`, the recipient is keyed as the queue row names it."""

    def __init__(
        self,
        queue: QueueStore,
        keys: KeyLookup,
        clock: Clock,
        resolver: Recipients | None = None,
        *,
        hostname: str = "localhost",
        signer: OutboundSigner | None = None,
    ) -> None:
        self._ctx = IntakeContext(
            role=Role.MX,
            settings=ServerSettings(hostname=hostname),
            queue=queue,
            resolver=resolver if resolver is not None else _AsGiven(),
            clock=clock,
            keys=keys,
            signer=signer,  # DKIM for the notices from MAILER-DAEMON@hostname
        )

    @property
    def context(self) -> IntakeContext:
        """The door's context (a reload gives it new end-of-message rooms: boot.build)."""
        return self._ctx

    async def __call__(
        self,
        body: BodyWriter,
        data: bytes,
        *,
        recipients: list[tuple[Address, Address]],
        params: dict[str, str | None],
        ours: bool,
    ) -> str:
        ctx = self._ctx
        # RFC 3461 §6.1 / RFC 5321 §4.5.5: a DSN goes from the null reverse-path.
        tx = Transaction(None, params)
        for dest, original in recipients:
            reply = add_recipient(ctx, tx, dest, ctx.resolver.resolve(dest), NO_DSN, session="dsn")
            if reply is DEFER_REPLY:
                body.discard()
                raise QueueWriteError(None, f"key failure: {reply}")
            if reply is not None:  # cannot happen without a limiter; queued as it is named
                tx.add((dest,), original, NO_DSN)
        message: BodyWriter | SealedScratch = body
        if tx.keyed:
            body.discard()  # its id names the notice (Message-ID); the copies get their own
            message = SealedScratch(ctx.queue.messages_dir)
        message.write(data)
        door = Door.NOTICE if ours else Door.OUTSIDE_NOTICE  # signed only if ours (docstring)
        facts = Submitted("dsn", "", "", None, None, params, door)
        # Signed by its From: MAILER-DAEMON@hostname (queue/dsn.py), when ours.
        ids = await end_of_message(ctx, tx, message, facts, captured=data, trace=lambda _: b"",
                                   direct=False)  # fmt: skip
        if isinstance(ids, Reply):
            raise QueueWriteError(None, f"key failure: {ids}")
        return ",".join(ids)
