"""MTA-STS (RFC 8461): record and policy parsing, MX patterns, discovery and the cache."""

import asyncio

import pytest

from dnsserver import FakeResolver
from hato.delivery.mtasts import (
    MtaSts,
    StsError,
    StsFetchError,
    StsMode,
    StsPolicy,
    mx_pattern_matches,
    parse_policy,
    parse_sts_record,
)
from hato.model.dns import DnsStatus, RdType
from kit.clock import FakeClock

POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 86400\r\n"
)


def test_parse_record() -> None:
    assert parse_sts_record("v=STSv1; id=20160831085700Z;") == "20160831085700Z"
    assert parse_sts_record("v=STSv1;id=abc") == "abc"
    for bad in ("v=STSv2; id=1", "id=1; v=STSv1", "v=STSv1;", "v=STSv1; id=a-b", "v=STSv1; id"):
        with pytest.raises(StsError):
            parse_sts_record(bad)


def test_parse_policy() -> None:
    policy = parse_policy(POLICY, "id1")
    assert policy == StsPolicy(StsMode.ENFORCE, ("mail.example.com", "*.example.net"), 86400, "id1")
    testing = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 9999999999\n")
    assert testing.mode is StsMode.TESTING and testing.max_age == 31_557_600
    none = parse_policy("version: STSv1\nmode: none\nmax_age: 1\nfuture_key: x\n")
    assert none.mode is StsMode.NONE and none.mx == ()


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a\nmax_age: 1",  # no version
        "version: STSv1\nmode: strict\nmx: a\nmax_age: 1",
        "version: STSv1\nmode: enforce\nmax_age: 1",  # no mx
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon",
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: 1\ngarbage line",
    ],
)
def test_bad_policies(text: str) -> None:
    with pytest.raises(StsError):
        parse_policy(text)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.com.", True),
        ("mail.example.com", "mx.example.com", False),
        ("*.example.net", "mx1.example.net", True),
        ("*.example.net", "example.net", False),  # RFC 8461 §4.1: one label, not zero
        ("*.example.net", "a.b.example.net", False),  # ... and not two
        ("*.example.net", "mx1.example.org", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_pattern_matches(pattern, host) is matches


class Fetcher:
    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0
        self.fail = False

    async def fetch(self, domain: str) -> str:
        self.calls += 1
        if self.fail:
            raise StsFetchError("connection refused")
        return self.text


def _sts(record: str = "v=STSv1; id=one;") -> tuple[MtaSts, FakeResolver, Fetcher, FakeClock]:
    resolver = FakeResolver({("_mta-sts.example.com", RdType.TXT): [record]})
    fetcher, clock = Fetcher(POLICY), FakeClock(1_000_000.0, 1_000_000.0)
    return MtaSts(resolver, fetcher, clock), resolver, fetcher, clock


def test_discovery_fetches_once_per_id_and_caches_for_max_age() -> None:
    sts, resolver, fetcher, _clock = _sts()
    policy = asyncio.run(sts.policy_for("Example.com"))
    assert policy is not None and policy.mode is StsMode.ENFORCE and policy.id == "one"
    assert asyncio.run(sts.policy_for("example.com")) == policy
    assert fetcher.calls == 1
    resolver.table[("_mta-sts.example.com", RdType.TXT)] = ["v=STSv1; id=two;"]
    assert asyncio.run(sts.policy_for("example.com")) is not None
    assert fetcher.calls == 2  # RFC 8461 §5.1: a new id -> fetch again


def test_cached_policy_survives_dns_and_fetch_failures_until_expiry() -> None:
    sts, resolver, fetcher, clock = _sts()
    assert asyncio.run(sts.policy_for("example.com")) is not None
    resolver.table[("_mta-sts.example.com", RdType.TXT)] = DnsStatus.TEMPFAIL
    assert asyncio.run(sts.policy_for("example.com")) is not None
    resolver.table[("_mta-sts.example.com", RdType.TXT)] = ["v=STSv1; id=new;"]
    fetcher.fail = True
    assert asyncio.run(sts.policy_for("example.com")) is not None  # refresh failed: keep it
    clock.advance(86401)
    assert asyncio.run(sts.policy_for("example.com")) is None  # expired, and no fresh one


def test_no_record_or_two_records_or_mode_none_mean_no_policy() -> None:
    sts, resolver, fetcher, _clock = _sts()
    del resolver.table[("_mta-sts.example.com", RdType.TXT)]
    assert asyncio.run(sts.policy_for("example.com")) is None
    resolver.table[("_mta-sts.example.com", RdType.TXT)] = ["v=STSv1; id=a;", "v=STSv1; id=b;"]
    assert asyncio.run(sts.policy_for("example.com")) is None
    assert fetcher.calls == 0
    resolver.table[("_mta-sts.example.com", RdType.TXT)] = ["v=STSv1; id=c;"]
    fetcher.text = "version: STSv1\nmode: none\nmax_age: 100\n"
    assert asyncio.run(sts.policy_for("example.com")) is None
    assert fetcher.calls == 1
