"""DnsCache on a fake clock: TTL clamps, negative answers, no TEMPFAIL, bounded size."""

from __future__ import annotations

from hato.dns import CacheSettings, DnsCache
from hato.model.dns import AddressRecord, DnsAnswer, DnsStatus, RdType
from kit.clock import FakeClock


def answer(name: str, status: DnsStatus = DnsStatus.OK, ttl: int = 300) -> DnsAnswer:
    records = (AddressRecord("192.0.2.1"),) if status is DnsStatus.OK else ()
    return DnsAnswer(name, RdType.A, status, records, ttl)


def test_ttl_is_clamped_and_counts_down() -> None:
    clock = FakeClock(0.0, 0.0)
    cache = DnsCache(clock, CacheSettings(min_ttl=30, max_ttl=100, max_negative_ttl=10))
    cache.put(answer("short.example", ttl=1))
    cache.put(answer("long.example", ttl=10_000))
    cache.put(answer("gone.example", DnsStatus.NXDOMAIN, ttl=3600))
    clock.advance(20)
    hit = cache.get("LONG.example.", RdType.A)
    assert hit is not None and hit.ttl == 80
    assert cache.get("short.example", RdType.A) is not None  # raised to 30
    assert cache.get("gone.example", RdType.A) is None  # negative: at most 10
    assert cache.get("long.example", RdType.MX) is None


def test_tempfail_and_zero_ttl_are_not_cached() -> None:
    cache = DnsCache(FakeClock(0.0, 0.0))
    cache.put(DnsAnswer("x.example", RdType.A, DnsStatus.TEMPFAIL))
    cache.put(answer("y.example", ttl=0))
    assert len(cache) == 0


def test_size_is_bounded_soonest_expiry_first() -> None:
    clock = FakeClock(0.0, 0.0)
    cache = DnsCache(clock, CacheSettings(max_entries=10))
    for i in range(11):
        cache.put(answer(f"n{i}.example", ttl=100 + i))
    assert len(cache) == 9
    assert cache.get("n0.example", RdType.A) is None
    assert cache.get("n10.example", RdType.A) is not None
