"""Encryption at rest in the session (issue 6): which recipients have keys, and queueing one
copy per distinct content so a keyed user's plaintext never reaches the disk.

Theory: at RCPT the session asks `recipient_keys` for each final mailbox; a key that cannot be
used with the DEFER policy answers 450 4.7.5 for that recipient. If any accepted recipient has a
key, the message is held in memory (never streamed to a spool file) and, after DATA, split by
`hato.crypto.protect_message` into the plaintext copy for unkeyed recipients and one encrypted
copy per keyed recipient; each is committed as its own queue entry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from hato.crypto import FailurePolicy, KeyLookup, Protected, protect_message
from hato.model import Address


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    keyed: bool  # at least one of the mailboxes has a usable key
    defer_reason: str = ""  # a key cannot be used and its owner's policy is DEFER


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
    return KeyVerdict(keyed)


async def protect(
    keys: KeyLookup, message: bytes, recipients: Sequence[Address], now: dt.datetime
) -> Protected:
    """`protect_message` off the event loop (public-key operations cost about a millisecond)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, protect_message, message, recipients, keys, now)
