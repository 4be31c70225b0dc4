"""The Protocols that rooms meet at, so tests can plug in fakes (clock, resolver, ...).

Must not import anything of hato but model.
"""

from __future__ import annotations

import time
from typing import Protocol

from hato.model.address import Address


class Clock(Protocol):
    """Wall-clock and monotonic time; a fake in tests."""

    def now(self) -> float:
        """Seconds since the epoch (wall clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class UserDirectory(Protocol):
    """The accounts of our local domains (hato.accounts implements it on SQLite)."""

    def exists(self, address: Address) -> bool:
        """Whether `address` (canonical: lower-case local part, no +tag) is an account."""
        ...
