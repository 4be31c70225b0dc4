"""A small DNS answer cache that respects TTLs (RFC 1035 §3.2.1, RFC 2308 §5 for negatives).

Theory: answers are kept under (name, type) until their TTL runs out, clamped between
`min_ttl` and `max_ttl`; NXDOMAIN and NODATA are cached for their negative TTL (RFC 2308 §5),
TEMPFAIL never (RFC 2308 §7.1 allows at most 5 minutes; not caching is the safe choice: the
next client simply asks again). A hit returns the answer with the TTL that is left. The table
holds at most `max_entries`; past that, expired entries go, then those closest to expiry
(down to 90%, so that the sweep is rare).

May import hato.model only. Time comes from a `Clock`.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

from hato.model import Clock, SystemClock
from hato.model.dns import DnsAnswer, DnsStatus, RdType, normalize_name

_Key = tuple[str, RdType]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    max_entries: int = 10_000
    min_ttl: int = 0  # a floor for very short TTLs (0: take them as they are)
    max_ttl: int = 86_400  # RFC 2181 §8 allows 68 years; a day bounds stale data
    max_negative_ttl: int = 3_600  # RFC 2308 §5: negative answers, at most an hour here


class DnsCache:
    def __init__(self, clock: Clock | None = None, settings: CacheSettings | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._settings = settings or CacheSettings()
        self._entries: dict[_Key, tuple[float, DnsAnswer]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, rdtype: RdType) -> DnsAnswer | None:
        key = (normalize_name(name), rdtype)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        left = expires - self._clock.monotonic()
        if left <= 0:
            del self._entries[key]
            return None
        return dataclasses.replace(answer, ttl=int(left))

    def put(self, answer: DnsAnswer) -> None:
        if answer.status is DnsStatus.TEMPFAIL:
            return
        s = self._settings
        cap = s.max_ttl if answer.status is DnsStatus.OK else s.max_negative_ttl
        ttl = min(max(answer.ttl, s.min_ttl), cap)
        if ttl <= 0 or s.max_entries <= 0:
            return
        key = (normalize_name(answer.name), answer.rdtype)
        self._entries[key] = (self._clock.monotonic() + ttl, answer)
        if len(self._entries) > s.max_entries:
            self._shrink()

    def clear(self) -> None:
        self._entries.clear()

    def _shrink(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        excess = len(self._entries) - self._settings.max_entries * 9 // 10
        if excess > 0:
            soonest = heapq.nsmallest(excess, self._entries.items(), key=lambda kv: kv[1][0])
            for key, _ in soonest:
                del self._entries[key]
