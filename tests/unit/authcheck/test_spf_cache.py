"""SPF results are kept for the shortest TTL of the answers that decided them, per client IP,
MAIL FROM and HELO; temperrors never."""

from __future__ import annotations

import asyncio

from dnsserver import FakeResolver
from hato.authcheck.spf import SpfResultCode
from hato.authcheck.spf_cache import SpfCache
from hato.model.dns import DnsStatus, RdType
from kit.clock import FakeClock

TABLE = {
    ("sender.test", RdType.TXT): ["v=spf1 include:_spf.sender.test -all"],
    ("_spf.sender.test", RdType.TXT): ["v=spf1 ip4:192.0.2.0/24 -all"],
}


def _check(cache: SpfCache, resolver: FakeResolver, ip: str = "192.0.2.1", **kw: str) -> str:
    result = asyncio.run(
        cache.check_mail_from(
            ip,
            kw.get("sender", "alice@sender.test"),
            helo=kw.get("helo", "mail.sender.test"),
            resolver=resolver,
            receiver="mx.test",
        )
    )
    return result.result.value


def test_a_result_is_kept_for_the_ttl_of_its_answers() -> None:
    clock = FakeClock()
    resolver = FakeResolver(TABLE, ttl=300)
    cache = SpfCache(clock)
    assert _check(cache, resolver) == "pass"
    asked = len(resolver.asked)
    assert asked == 2  # the record and the include's
    clock.advance(299)
    assert _check(cache, resolver) == "pass"
    assert len(resolver.asked) == asked  # a hit: no question asked
    clock.advance(1)
    assert _check(cache, resolver) == "pass"
    assert len(resolver.asked) == 2 * asked  # expired: evaluated again


def test_another_client_sender_or_helo_is_a_miss() -> None:
    clock = FakeClock()
    resolver = FakeResolver(TABLE)
    cache = SpfCache(clock)
    assert _check(cache, resolver) == "pass"
    assert _check(cache, resolver, ip="198.51.100.1") == "fail"
    assert _check(cache, resolver, sender="bob@sender.test") == "pass"
    assert _check(cache, resolver, helo="other.sender.test") == "pass"
    assert len(cache) == 4
    assert len(resolver.asked) == 8


def test_a_changed_record_is_seen_after_the_ttl() -> None:
    clock = FakeClock()
    resolver = FakeResolver(dict(TABLE), ttl=60)
    cache = SpfCache(clock)
    assert _check(cache, resolver) == "pass"
    resolver.table[("_spf.sender.test", RdType.TXT)] = ["v=spf1 -all"]
    assert _check(cache, resolver) == "pass"  # still within the TTL
    clock.advance(60)
    assert _check(cache, resolver) == "fail"


def test_temperror_and_zero_ttl_are_not_kept() -> None:
    clock = FakeClock()
    resolver = FakeResolver(TABLE, ttl=300)
    resolver.tempfail.add("_spf.sender.test")
    cache = SpfCache(clock)
    assert _check(cache, resolver) == SpfResultCode.TEMPERROR.value
    assert len(cache) == 0
    resolver.tempfail.clear()
    assert _check(cache, resolver) == "pass"
    assert len(cache) == 1
    zero = FakeResolver(TABLE, ttl=0)
    fresh = SpfCache(clock)
    assert _check(fresh, zero) == "pass"
    assert len(fresh) == 0


def test_no_record_is_kept_for_the_negative_ttl() -> None:
    clock = FakeClock()
    resolver = FakeResolver({("sender.test", RdType.A): DnsStatus.NODATA}, ttl=120)
    cache = SpfCache(clock)
    assert _check(cache, resolver) == "none"
    clock.advance(119)
    assert _check(cache, resolver) == "none"
    assert len(resolver.asked) == 1


def test_the_table_stays_bounded() -> None:
    clock = FakeClock()
    resolver = FakeResolver(TABLE)
    cache = SpfCache(clock, max_entries=3)
    for n in range(10):
        _check(cache, resolver, ip=f"192.0.2.{n + 1}")
        assert len(cache) <= 3
