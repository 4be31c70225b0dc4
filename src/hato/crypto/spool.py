"""Queue-time protection: which copy of a message each recipient gets, before the queue commit.

Theory of operation. The session encrypts each keyed recipient's copy *before* it writes the
message to the spool, so the plaintext of such mail never reaches the disk (spool, Maildir or
backups). Recipients without a key share one plaintext copy, as before. The steps:

1. RCPT TO: `check_recipient(address, keys, now)`. A keyed user whose key cannot be used now
   (expired since import) and whose policy is DEFER gets `DEFER_REPLY` (450 4.7.5) for that
   recipient only; the sender's server retries, and the admin is told (log the failure).
2. After DATA, before the queue commit: `protect_stream(source, recipients, keys, now, new_body)`
   writes one body per distinct content: the plaintext copy for unkeyed recipients, one
   encrypted copy per keyed recipient, one warning-headed plaintext copy for the
   PLAINTEXT-policy failures. Each copy is queued as its own message (its recipients only).
   `deferred` is non-empty only if a key went bad between RCPT and DATA: answer 451 4.7.5 for
   the transaction. The message is read from `source` (in the session: a `SealedScratch`, so
   that it is never in memory whole nor on disk in the clear) and every body is written as it
   is made, so memory stays a few chunks whatever the size. `protect_message` is the same on
   bytes, giving bytes.

Spool bodies therefore never hold a keyed user's plaintext, and a crash at any point leaves only
ciphertext or nothing for them.

Must not import anything of hato but model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from hato.crypto.encrypt import EncryptionError, Source, bytes_source, encrypt_stream
from hato.crypto.keys import PublicKey
from hato.crypto.keystore import FailurePolicy, KeyLookup, canonical
from hato.model import Address, Reply

# RFC 3463 §3.8: X.7.5 "Cryptographic failure"; 4yz: the mail waits (RFC 5321 §4.2.1).
DEFER_REPLY = Reply(450, "4.7.5", "Requested action not taken: try again later")
DEFER_DATA_REPLY = Reply(451, "4.7.5", "Requested action aborted: try again later")

WARNING_FIELD = b"X-Hato-Encryption"


@dataclass(frozen=True, slots=True)
class KeyFailure:
    """A keyed recipient whose key cannot be used; `reason` is for the admin's log."""

    recipient: Address
    reason: str
    policy: FailurePolicy


@dataclass(frozen=True, slots=True)
class EncryptedCopy:
    key: PublicKey
    recipients: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class EncryptionPlan:
    """Who gets the plaintext, who gets which encrypted copy, and whose key failed."""

    plain: tuple[Address, ...]
    encrypted: tuple[EncryptedCopy, ...]
    failed: tuple[KeyFailure, ...]


@dataclass(frozen=True, slots=True)
class Copy:
    """One message body to queue for `recipients`."""

    data: bytes
    recipients: tuple[Address, ...]
    encrypted: bool


@dataclass(frozen=True, slots=True)
class Protected:
    copies: tuple[Copy, ...]
    deferred: tuple[KeyFailure, ...]  # DEFER policy: not queued; answer 4xx
    in_clear: tuple[KeyFailure, ...]  # PLAINTEXT policy: queued with the warning header


def check_recipient(address: Address, keys: KeyLookup, now: dt.datetime) -> KeyFailure | None:
    """None if mail for `address` can be stored (no key, or a usable one)."""
    key = keys.get(address)
    if key is None or not key.expired(now):
        return None
    return KeyFailure(address, f"key {key.fingerprint} expired", keys.policy(address))


def split_for_encryption(
    recipients: Iterable[Address], keys: KeyLookup, now: dt.datetime
) -> EncryptionPlan:
    """Sort recipients by the copy they need (duplicates, by canonical address, once)."""
    plain: list[Address] = []
    encrypted: list[EncryptedCopy] = []
    failed: list[KeyFailure] = []
    seen: set[str] = set()
    for address in recipients:
        if canonical(address) in seen:
            continue
        seen.add(canonical(address))
        key = keys.get(address)
        if key is None:
            plain.append(address)
        elif key.expired(now):
            reason = f"key {key.fingerprint} expired"
            failed.append(KeyFailure(address, reason, keys.policy(address)))
        else:
            encrypted.append(EncryptedCopy(key, (address,)))
    return EncryptionPlan(tuple(plain), tuple(encrypted), tuple(failed))


class Sink(Protocol):
    """Where one copy is written (a queue body)."""

    def write(self, data: bytes, /) -> None: ...
    def discard(self) -> None: ...


S = TypeVar("S", bound=Sink)


@dataclass(frozen=True, slots=True)
class Stored(Generic[S]):
    """One body written for `recipients`."""

    body: S
    recipients: tuple[Address, ...]
    encrypted: bool


@dataclass(frozen=True, slots=True)
class ProtectedStream(Generic[S]):
    copies: tuple[Stored[S], ...]
    deferred: tuple[KeyFailure, ...]  # DEFER policy: not queued; answer 4xx
    in_clear: tuple[KeyFailure, ...]  # PLAINTEXT policy: queued with the warning header


def protect_stream(
    source: Source,
    recipients: Iterable[Address],
    keys: KeyLookup,
    now: dt.datetime,
    new_body: Callable[[], S],
) -> ProtectedStream[S]:
    """The copies to queue, each written into a body from `new_body` (see the module's theory
    of operation). On an exception (the source failed) every body made is discarded."""
    plan = split_for_encryption(recipients, keys, now)
    made: list[S] = []

    def body() -> S:
        made.append(new_body())
        return made[-1]

    try:
        return _protect(source, plan, keys, now, body)
    except BaseException:
        for written in made:
            written.discard()
        raise


def _protect(
    source: Source,
    plan: EncryptionPlan,
    keys: KeyLookup,
    now: dt.datetime,
    new_body: Callable[[], S],
) -> ProtectedStream[S]:
    copies: list[Stored[S]] = []
    failed = list(plan.failed)
    if plan.plain:
        copies.append(Stored(_copy(source, new_body()), plan.plain, encrypted=False))
    for wanted in plan.encrypted:
        target = new_body()
        try:
            if not encrypt_stream(source, wanted.key, target.write, now=now):
                _copy(source, target)  # already encrypted end to end: stored as it came
        except EncryptionError as exc:
            target.discard()
            for address in wanted.recipients:
                failed.append(KeyFailure(address, str(exc), keys.policy(address)))
            continue
        copies.append(Stored(target, wanted.recipients, encrypted=True))
    deferred = tuple(f for f in failed if f.policy is FailurePolicy.DEFER)
    in_clear = tuple(f for f in failed if f.policy is FailurePolicy.PLAINTEXT)
    if in_clear:
        warned = new_body()
        warned.write(warning_header(in_clear[0].reason))
        copies.append(Stored(_copy(source, warned), tuple(f.recipient for f in in_clear), False))
    return ProtectedStream(tuple(copies), deferred, in_clear)


def _copy(source: Source, target: S) -> S:
    for chunk in source():
        target.write(chunk)
    return target


class _Collected:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes, /) -> None:
        self.data += data

    def discard(self) -> None:
        self.data.clear()


def protect_message(
    message: bytes, recipients: Iterable[Address], keys: KeyLookup, now: dt.datetime
) -> Protected:
    """`protect_stream` on bytes in memory."""
    done = protect_stream(bytes_source(message), recipients, keys, now, _Collected)
    copies = tuple(Copy(bytes(c.body.data), c.recipients, c.encrypted) for c in done.copies)
    return Protected(copies, done.deferred, done.in_clear)


def warning_header(reason: str) -> bytes:
    """The field prefixed to mail stored in the clear for a user whose key failed (a stored
    prefix: the body is not rewritten)."""
    clean = " ".join(reason.replace("\r", " ").replace("\n", " ").split())[:400]
    # RFC 5322 §2.1.1: keep the line short enough; fold before the reason.
    return (
        WARNING_FIELD
        + b": not encrypted, your key could not be used;\r\n "
        + clean.encode("utf-8", "replace")
        + b"\r\n"
    )
