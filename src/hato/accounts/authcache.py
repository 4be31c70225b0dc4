"""Passwords verified a moment ago, remembered as keyed hashes: a second login is one HMAC.

Must not import anything of hato but model.

Each PLAIN/LOGIN login costs an argon2id verification (~150 ms of CPU and 64 MiB: that is the
point of argon2id), and a mail client or a relay logs in for every session. Like Dovecot's
`auth_cache_ttl`, a password that verified is remembered for a while ([auth] cache_ttl), so
the same login again costs a database look-up and one HMAC-SHA256.

What is kept, per account, is HMAC-SHA256(k, account, password, stored argon2id hash) under a
random key `k` made when the process starts and never written anywhere: a memory image of the
process holds neither a password nor anything to test guesses against offline without `k`
(which is in the same image: with both, a guess costs one HMAC instead of an argon2id run,
for the accounts that logged in within the TTL; that is the trade-off, see
docs/configuration.md). The stored hash is part of the HMAC, so a changed password (a new
hash, from any node of the shared store) no longer matches, and neither does an account that
was removed (there is no hash to read): nothing needs to be told of a change.

Failures are never remembered (Dovecot's auth_cache_negative_ttl is not copied): a wrong
password always costs the full argon2id run, and every failure still reaches the session's
AUTH throttle; a remembered success is still subject to the block and the throttle, which
come before the password is looked at. The cache is bounded (least recently used first out).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

DEFAULT_TTL = 300.0  # seconds ([auth] cache_ttl)
DEFAULT_SIZE = 10000  # accounts ([auth] cache_size)


class VerifiedCache:
    """Recent successful verifications, by account; thread-safe (verify runs in threads)."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._now = now
        self._key = secrets.token_bytes(32)  # this process's alone: never stored
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._size > 0

    def _digest(self, account: str, password: str, stored: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (account, password, stored):
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(4, "big") + data)  # length-prefixed: unambiguous
        return mac.digest()

    def verified(self, account: str, password: str, stored: str) -> bool:
        """Whether `password` verified against `stored` for `account` within the TTL."""
        if not self.enabled:
            return False
        with self._lock:
            entry = self._entries.get(account)
            if entry is None:
                return False
            if entry[1] <= self._now():
                del self._entries[account]
                return False
        if not hmac.compare_digest(entry[0], self._digest(account, password, stored)):
            return False  # another password, or the hash changed: verify in full
        with self._lock:
            if account in self._entries:
                self._entries.move_to_end(account)
        return True

    def remember(self, account: str, password: str, stored: str) -> None:
        """`password` has just verified against `stored` (argon2id) for `account`."""
        if not self.enabled:
            return
        digest = self._digest(account, password, stored)
        with self._lock:
            self._entries[account] = (digest, self._now() + self._ttl)
            self._entries.move_to_end(account)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
