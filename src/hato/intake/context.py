"""What the intake pipeline needs of the server, whatever the door: the rooms it calls (queue,
address book, keys, limits, direct delivery) and the settings it applies. The SMTP listener's
`SessionContext` (server/context.py) extends it with what only a network session needs; local
submission and the DSN committer build one of their own (`IntakeContext` itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from hato.authcheck import ArcSealer
from hato.crypto import KeyLookup
from hato.delivery.loops import DEFAULT_HOP_LIMIT
from hato.directory.resolver import Resolution
from hato.intake.direct import DirectDelivery
from hato.intake.headers import MAX_HEADER_FIELDS
from hato.intake.inbound import InboundChecker
from hato.intake.miltercheck import MilterFilter
from hato.intake.signing import OutboundSigner
from hato.intake.spamcheck import SpamFilter
from hato.model import Address, Clock, Role
from hato.policy import SendLimiter
from hato.queue import QueueStore
from hato.smtp import ServerSettings


class Recipients(Protocol):
    """What the pipeline asks about addresses (hato.directory.resolver.RecipientResolver, or the
    composition root's proxy that a reload swaps)."""

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution: ...

    def owns(self, user: Address, address: Address) -> bool: ...

    def is_local_domain(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class DoorConfig:
    """What the configuration decides for a door without a listener (local submission, the
    notices): its end-of-message rooms (finish.py), built at start and by every reload
    (boot/build.py `door_config`) and put in place whole by `IntakeContext.configure_door`."""

    signer: OutboundSigner | None
    spam: SpamFilter | None = None
    milters: tuple[MilterFilter, ...] = ()
    max_header_fields: int = MAX_HEADER_FIELDS  # judged at the end of the message too


@dataclass(slots=True, kw_only=True)
class IntakeContext:
    """The rooms and settings of the pipeline (a reload replaces some fields in place)."""

    role: Role
    settings: ServerSettings  # our hostname (Received, milter macros), the size limit
    queue: QueueStore
    resolver: Recipients
    clock: Clock
    postmaster_domain: str = "localhost"  # where a bare <postmaster> is delivered
    limiter: SendLimiter | None = None  # per-user sending limits (authenticated mail)
    keys: KeyLookup | None = None  # users' public keys: their mail is stored encrypted
    # The RCPT verdict's keys when its "no key" may come from memory (the shared PostgreSQL
    # store: crypto/keystore_pg.py KeptKeys); set, the queue's commit asks the keys again in
    # its own transaction (intake/message.py).
    rcpt_keys: KeyLookup | None = None
    direct: DirectDelivery | None = None  # local mail into its Maildir before the 250
    hop_limit: int = DEFAULT_HOP_LIMIT  # Received: + Delivered-To: fields of a loop
    max_header_fields: int = MAX_HEADER_FIELDS  # [limits] max_header_fields, every role
    # Extra sender addresses granted per account ([[domain]] send_as), lower-case.
    send_as: dict[Address, frozenset[Address]] = field(default_factory=dict)
    # The end-of-message steps (finish.py), each where the door's role has it:
    inbound: InboundChecker | None = None  # SPF/DKIM/DMARC/ARC on mail received on mx
    authserv_id: str = ""  # ours (RFC 8601): forged Authentication-Results claiming it go
    signer: OutboundSigner | None = None  # DKIM for authenticated mail of our domains
    sealers: dict[str, ArcSealer] = field(default_factory=dict)  # ARC when aliases forward
    spam: SpamFilter | None = None  # rspamd's verdict at the end of DATA ([rspamd] roles)
    milters: tuple[MilterFilter, ...] = ()  # [[milter]] of this role, in order, after rspamd

    def configure_door(self, config: DoorConfig) -> None:
        """Put a door's end-of-message rooms in place, every field of it (typed, as
        `SessionContext.configure` does for a listener)."""
        self.signer = config.signer
        self.spam = config.spam
        self.milters = config.milters
        self.max_header_fields = config.max_header_fields
