"""MX routing (RFC 5321 §5.1, RFC 7505): order, implicit MX, null MX, DNS failures, loops."""

import asyncio
import random

import pytest

from dnsserver import FakeResolver
from hato.delivery.mx import (
    DNS_TEMPFAIL,
    MAIL_LOOP,
    NO_SUCH_DOMAIN,
    NULL_MX,
    MxHost,
    RelayTarget,
    Route,
    RouteError,
    host_addresses,
    ip_literal,
    is_loopback,
    order_mx,
    parse_relay,
    route_domain,
)
from hato.model.dns import DnsStatus, MxRecord, RdType


def _route(resolver: FakeResolver, domain: str, seed: int = 1, own: tuple[str, ...] = ()) -> object:
    return asyncio.run(route_domain(resolver, domain, random.Random(seed), own))


def _names(route: object) -> list[str]:
    assert isinstance(route, Route)
    return [h.name for h in route.hosts]


def test_mx_sorted_by_preference() -> None:
    records = [MxRecord(20, "b.test"), MxRecord(10, "a.test"), MxRecord(30, "c.test")]
    resolver = FakeResolver({("example.com", RdType.MX): records})
    assert _names(_route(resolver, "example.com")) == ["a.test", "b.test", "c.test"]


def test_equal_preferences_come_in_a_random_order() -> None:
    records = [MxRecord(10, f"mx{i}.test") for i in range(6)] + [MxRecord(5, "first.test")]
    orders = {tuple(r.host for r in order_mx(records, random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1  # shuffled among equals
    assert all(order[0] == "first.test" for order in orders)  # never before a lower preference
    assert all(sorted(order[1:]) == [f"mx{i}.test" for i in range(6)] for order in orders)


def test_no_mx_means_implicit_mx_of_the_domain_itself() -> None:
    resolver = FakeResolver({("example.com", RdType.A): ["192.0.2.1"]})
    route = _route(resolver, "example.com")
    assert route == Route((MxHost("example.com", 0, False, implicit=True),))


def test_nxdomain_is_permanent_5_1_2() -> None:
    route = _route(FakeResolver({}), "nowhere.test")
    assert isinstance(route, RouteError)
    assert route.reply == NO_SUCH_DOMAIN and route.reply.is_permanent


def test_tempfail_is_temporary_4_4_3() -> None:
    resolver = FakeResolver({("example.com", RdType.MX): DnsStatus.TEMPFAIL})
    route = _route(resolver, "example.com")
    assert isinstance(route, RouteError)
    assert route.reply == DNS_TEMPFAIL and route.reply.enhanced == "4.4.3"


def test_null_mx_is_permanent_5_1_10() -> None:
    resolver = FakeResolver({("example.com", RdType.MX): [MxRecord(0, "")]})
    route = _route(resolver, "example.com")
    assert isinstance(route, RouteError)
    assert route.reply == NULL_MX and route.reply.enhanced == "5.1.10"


def test_null_mx_beside_real_mx_is_ignored() -> None:
    resolver = FakeResolver(
        {("example.com", RdType.MX): [MxRecord(0, ""), MxRecord(10, "mx.test")]}
    )
    assert _names(_route(resolver, "example.com")) == ["mx.test"]


def test_we_as_mx_keep_only_better_hosts_or_loop() -> None:
    records = [MxRecord(10, "primary.test"), MxRecord(20, "us.test"), MxRecord(30, "c.test")]
    resolver = FakeResolver({("example.com", RdType.MX): records})
    assert _names(_route(resolver, "example.com", own=("us.test",))) == ["primary.test"]
    best = FakeResolver({("example.com", RdType.MX): [MxRecord(10, "us.test")]})
    route = _route(best, "example.com", own=("US.test.",))
    assert isinstance(route, RouteError) and route.reply == MAIL_LOOP


def test_secure_flag_follows_the_ad_bit() -> None:
    resolver = FakeResolver({("example.com", RdType.MX): [MxRecord(10, "mx.test")]})
    resolver.authenticated = True
    route = _route(resolver, "example.com")
    assert isinstance(route, Route) and route.hosts[0].secure


def test_host_addresses_ipv6_first_and_tempfail_kept() -> None:
    resolver = FakeResolver(
        {("mx.test", RdType.A): ["192.0.2.1"], ("mx.test", RdType.AAAA): ["2001:db8::1"]}
    )
    found = asyncio.run(host_addresses(resolver, "mx.test"))
    assert found.addresses == ("2001:db8::1", "192.0.2.1") and not found.tempfail
    half = FakeResolver({("mx.test", RdType.A): ["192.0.2.1"]})
    half.tempfail.add("mx.test")
    found = asyncio.run(host_addresses(half, "mx.test"))
    assert found.addresses == () and found.tempfail


def test_ip_literal_host_needs_no_dns() -> None:
    resolver = FakeResolver({})
    found = asyncio.run(host_addresses(resolver, "[192.0.2.7]"))
    assert found.addresses == ("192.0.2.7",) and resolver.asked == []
    assert ip_literal("[IPv6:2001:DB8::1]") == "2001:db8::1"
    assert ip_literal("mx.test") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relay.test", RelayTarget("relay.test", 25)),
        ("relay.test:2525", RelayTarget("relay.test", 2525)),
        ("[Relay.test]:587", RelayTarget("relay.test", 587)),
        ("[2001:db8::1]:24", RelayTarget("2001:db8::1", 24)),
        ("[192.0.2.1]", RelayTarget("192.0.2.1", 25)),
    ],
)
def test_parse_relay(text: str, expected: RelayTarget) -> None:
    assert parse_relay(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:x", "[host", "[host]x", "a b:25", "h:70000"])
def test_parse_relay_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST|port"):
        parse_relay(text)


def test_loopback() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
