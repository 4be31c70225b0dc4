"""SPF results kept for the TTL of the DNS answers that decided them.

Theory of operation. A sender's mail comes in streams: the same client, MAIL FROM and HELO,
message after message. RFC 7208 §4's check_host is a function of exactly those (the IP, the
sender for %{s} %{l} %{o} %{d}, the HELO for %{h}, and DNS), so while the DNS answers it read
stay valid its result stays the same; evaluating it again (the record walked, every
include's answer taken from the DNS cache, the macros expanded) was ~0.1 ms of CPU per message.
`SpfCache` keeps each result until the shortest TTL among the answers the check read (RFC 1035
§3.2.1: no longer than any of them may be kept) and at most `max_ttl`. Not kept: temperror
(the next message asks DNS again, RFC 7208 §8.6), results that read an answer with TTL 0,
and fails with an `exp=` explanation (its %{t} macro is the time of the check).

Must not import anything of hato except `hato.model` (and this room).
"""

from __future__ import annotations

from hato.authcheck.spf import SpfResult, SpfResultCode, check_mail_from
from hato.model import Clock
from hato.model.dns import DnsAnswer, DnsStatus, RdType, Resolver

_Key = tuple[str, str, str]


class _Watched:
    """A Resolver that remembers the shortest TTL of what it answered."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self.ttl: float | None = None

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        answer = await self._resolver.query(name, rdtype)
        ttl = 0 if answer.status is DnsStatus.TEMPFAIL else answer.ttl
        self.ttl = ttl if self.ttl is None else min(self.ttl, ttl)
        return answer


class SpfCache:
    def __init__(self, clock: Clock, *, max_ttl: float = 3600.0, max_entries: int = 10_000):
        self._clock = clock
        self._max_ttl = max_ttl
        self._max_entries = max_entries
        self._entries: dict[_Key, tuple[float, SpfResult]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, ip: str, mail_from: str, *, helo: str) -> SpfResult | None:
        """The result kept for these three while it is valid, else None (nothing asked)."""
        key = (ip, mail_from, helo.lower())
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] > self._clock.monotonic():
            return entry[1]
        del self._entries[key]
        return None

    async def check_mail_from(
        self, ip: str, mail_from: str, *, helo: str, resolver: Resolver, receiver: str
    ) -> SpfResult:
        """`spf.check_mail_from`, answered from the cache while the result is valid."""
        kept = self.cached(ip, mail_from, helo=helo)
        if kept is not None:
            return kept
        key = (ip, mail_from, helo.lower())
        now = self._clock.monotonic()
        watched = _Watched(resolver)
        result = await check_mail_from(
            ip, mail_from, helo=helo, resolver=watched, receiver=receiver, now=self._clock.now()
        )
        ttl = min(watched.ttl or 0, self._max_ttl)
        if ttl > 0 and result.result is not SpfResultCode.TEMPERROR and not result.explanation:
            if len(self._entries) >= self._max_entries:
                self._sweep(now)
            self._entries[key] = (now + ttl, result)
        return result

    def _sweep(self, now: float) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # all still valid: start again rather than scan for the oldest
