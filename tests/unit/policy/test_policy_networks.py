"""Network policy (OP25B): refuse dynamic ranges on mx, allow lists on submission, DNSBLs."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from dnsserver import FakeResolver
from hato.model.dns import DnsStatus, RdType
from hato.policy.decision import Accept, Decision, Defer, Reject
from hato.policy.networks import (
    DYNAMIC_REFUSED,
    LIST_UNAVAILABLE,
    NOT_ALLOWED,
    ClientNetwork,
    ConnectionVerdict,
    Listed,
    ListenerNetworkRules,
    NetworkTable,
    connection_check,
    connection_decision,
    dnsbl_lookup,
)

DYNAMIC = ClientNetwork(
    "dynamic",
    (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:1::/48")),
    dnsbl="pbl.example.net",
)
OFFICE = ClientNetwork("office", (ipaddress.ip_network("203.0.113.0/28"),))
TABLE = NetworkTable.of([DYNAMIC, OFFICE])
MX_RULES = ListenerNetworkRules(refuse=("dynamic",))
SUBMISSION_RULES = ListenerNetworkRules(allow=("office",))


def pbl_resolver() -> FakeResolver:
    return FakeResolver(
        {
            ("10.2.0.192.pbl.example.net", RdType.A): ["127.0.0.10"],
            ("11.2.0.192.pbl.example.net", RdType.A): ["127.255.255.254"],  # "refused" code
            ("12.2.0.192.pbl.example.net", RdType.A): ["192.0.2.1"],  # not a list answer
        }
    )


def decide(ip: str, rules: ListenerNetworkRules, resolver: FakeResolver) -> Decision:
    return asyncio.run(connection_decision(ip, rules, TABLE, resolver))


def check(ip: str, rules: ListenerNetworkRules, resolver: FakeResolver) -> ConnectionVerdict:
    return asyncio.run(connection_check(ip, rules, TABLE, resolver))


@pytest.mark.parametrize("ip", ["198.51.100.7", "2001:db8:1:2::5", "::ffff:198.51.100.9"])
def test_mx_refuses_dynamic_cidrs_without_asking_dns(ip: str) -> None:
    resolver = pbl_resolver()
    decision = decide(ip, MX_RULES, resolver)
    assert decision == Reject(DYNAMIC_REFUSED)
    assert DYNAMIC_REFUSED.code == 554 and DYNAMIC_REFUSED.enhanced == "5.7.1"
    assert "587" in DYNAMIC_REFUSED.text
    assert resolver.asked == []


def test_mx_refuses_address_listed_in_the_dnsbl() -> None:
    resolver = pbl_resolver()
    verdict = check("192.0.2.10", MX_RULES, resolver)
    assert verdict.decision == Reject(DYNAMIC_REFUSED)
    assert verdict.matches[0].via == "dnsbl" and verdict.matches[0].detail == "127.0.0.10"
    assert resolver.asked == [("10.2.0.192.pbl.example.net", RdType.A)]


def test_mx_accepts_unlisted_address() -> None:
    assert decide("192.0.2.99", MX_RULES, pbl_resolver()) == Accept()


def test_ipv6_dnsbl_query_uses_nibbles() -> None:
    resolver = pbl_resolver()
    assert decide("2001:db8:2::1", MX_RULES, resolver) == Accept()
    name = resolver.asked[0][0]
    assert name.startswith("1.0.0.0.") and name.endswith(".8.b.d.0.1.0.0.2.pbl.example.net")
    assert len(name.removesuffix(".pbl.example.net").split(".")) == 32  # RFC 5782 §2.4


def test_dnsbl_tempfail_is_not_listed_but_reported() -> None:
    resolver = pbl_resolver()
    resolver.tempfail.add("pbl.example.net")
    verdict = check("192.0.2.10", MX_RULES, resolver)
    assert verdict.decision == Accept()
    assert [m.network for m in verdict.unknown] == ["dynamic"]
    assert verdict.unknown[0].detail == "fake SERVFAIL"


@pytest.mark.parametrize(("ip", "detail"), [("192.0.2.11", "error"), ("192.0.2.12", "outside")])
def test_dnsbl_error_codes_never_count_as_listed(ip: str, detail: str) -> None:
    verdict = check(ip, MX_RULES, pbl_resolver())
    assert verdict.decision == Accept()
    assert verdict.unknown and detail in verdict.unknown[0].detail


def test_dnsbl_nodata_is_not_listed() -> None:
    resolver = FakeResolver({("10.2.0.192.pbl.example.net", RdType.A): DnsStatus.NODATA})
    listed, _ = asyncio.run(dnsbl_lookup("192.0.2.10", "pbl.example.net.", resolver))
    assert listed is Listed.NO


def test_submission_allows_only_named_networks() -> None:
    resolver = pbl_resolver()
    assert decide("203.0.113.5", SUBMISSION_RULES, resolver) == Accept()
    assert decide("203.0.113.16", SUBMISSION_RULES, resolver) == Reject(NOT_ALLOWED)
    assert decide("192.0.2.99", SUBMISSION_RULES, resolver) == Reject(NOT_ALLOWED)


def test_allow_by_dnsbl_that_fails_defers() -> None:
    resolver = pbl_resolver()
    resolver.tempfail.add("pbl.example.net")
    rules = ListenerNetworkRules(allow=("dynamic",))
    assert decide("192.0.2.10", rules, resolver) == Defer(LIST_UNAVAILABLE)
    assert decide("198.51.100.1", rules, resolver) == Accept()  # CIDR needs no DNS


def test_refuse_wins_over_allow() -> None:
    rules = ListenerNetworkRules(refuse=("dynamic",), allow=("dynamic", "office"))
    assert decide("198.51.100.1", rules, pbl_resolver()) == Reject(DYNAMIC_REFUSED)


def test_no_rules_accept_everyone_without_dns() -> None:
    resolver = pbl_resolver()
    assert decide("192.0.2.10", ListenerNetworkRules(), resolver) == Accept()
    assert resolver.asked == []


def test_unknown_network_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no \\[\\[network\\]\\] named 'home'"):
        decide("192.0.2.1", ListenerNetworkRules(refuse=("home",)), pbl_resolver())
