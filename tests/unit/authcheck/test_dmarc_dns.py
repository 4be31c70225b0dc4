"""SPF and DMARC end to end over real DNS: the in-process test DNS server, asked by the
production resolver (DnsPythonResolver). Each case with the action a receiver would take."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer, ZoneDict
from hato.authcheck.dmarc import DkimOutcome, DmarcPolicy, DmarcResult, DmarcStatus, SpfOutcome
from hato.authcheck.dmarc import evaluate as dmarc_evaluate
from hato.authcheck.spf import SpfResultCode, check_mail_from
from hato.dns import DnsPythonResolver

ZONE: ZoneDict = {
    "example.com": {
        "TXT": ["v=spf1 include:_spf.example.com -all"],
        "MX": [(10, "mx.example.com")],
    },
    "_spf.example.com": {"TXT": [("v=spf1 ip4:192.0.2.0/24 ", "ip6:2001:db8::/32 -all")]},
    "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"]},
    "mx.example.com": {"A": ["192.0.2.25"]},
    "shop.example.com": {"A": ["192.0.2.80"]},
    "strict.example": {"TXT": ["v=spf1 a -all"], "A": ["198.51.100.7"]},
    "_dmarc.strict.example": {"TXT": ["v=DMARC1; p=quarantine; aspf=s; adkim=s"]},
    "_dmarc.down.example": {"TXT": ["v=DMARC1; p=reject"]},
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        server.servfail.add("_dmarc.down.example")
        yield server


def _dmarc(
    server: DnsTestServer, author: str, spf: SpfOutcome | None, dkim: list[DkimOutcome]
) -> DmarcResult:
    resolver = DnsPythonResolver([server.nameserver], timeout=HATO_DNS_TIMEOUT)
    return asyncio.run(dmarc_evaluate(author, spf, dkim, resolver=resolver, rng=random.Random(7)))


def test_spf_pass_through_include_then_aligned_dmarc_pass(dns_server: DnsTestServer) -> None:
    resolver = DnsPythonResolver([dns_server.nameserver], timeout=HATO_DNS_TIMEOUT)
    spf = asyncio.run(
        check_mail_from(
            "2001:db8::25", "news@example.com", helo="mx.example.com", resolver=resolver, now=0
        )
    )
    assert (spf.result, spf.mechanism) == (SpfResultCode.PASS, "include:_spf.example.com")
    result = _dmarc(dns_server, "example.com", SpfOutcome.of(spf), [])
    assert (result.status, result.disposition, result.spf_aligned) == (
        DmarcStatus.PASS,
        DmarcPolicy.NONE,
        True,
    )


def test_spf_fail_and_no_dkim_is_rejected(dns_server: DnsTestServer) -> None:
    resolver = DnsPythonResolver([dns_server.nameserver], timeout=HATO_DNS_TIMEOUT)
    spf = asyncio.run(
        check_mail_from(
            "203.0.113.9", "ceo@example.com", helo="evil.test", resolver=resolver, now=0
        )
    )
    assert spf.result is SpfResultCode.FAIL
    result = _dmarc(dns_server, "example.com", SpfOutcome.of(spf), [])
    assert (result.status, result.disposition) == (DmarcStatus.FAIL, DmarcPolicy.REJECT)


def test_dkim_only_pass_over_dns(dns_server: DnsTestServer) -> None:
    dkim = [DkimOutcome("example.com", "pass", "s1")]
    result = _dmarc(dns_server, "example.com", SpfOutcome("list.example", "pass"), dkim)
    assert (result.status, result.dkim_aligned, result.spf_aligned) == (
        DmarcStatus.PASS,
        True,
        False,
    )


def test_subdomain_gets_sp_from_the_organizational_record(dns_server: DnsTestServer) -> None:
    result = _dmarc(dns_server, "shop.example.com", SpfOutcome("shop.example.com", "fail"), [])
    assert (result.status, result.policy_domain, result.disposition) == (
        DmarcStatus.FAIL,
        "example.com",
        DmarcPolicy.QUARANTINE,
    )


def test_strict_alignment_over_dns(dns_server: DnsTestServer) -> None:
    relaxed_only = SpfOutcome("bounce.strict.example", "pass")
    result = _dmarc(dns_server, "strict.example", relaxed_only, [])
    assert (result.status, result.disposition) == (DmarcStatus.FAIL, DmarcPolicy.QUARANTINE)


def test_missing_record_over_dns(dns_server: DnsTestServer) -> None:
    result = _dmarc(dns_server, "nowhere.example", None, [])
    assert (result.status, result.disposition) == (DmarcStatus.NONE, DmarcPolicy.NONE)


def test_servfail_is_temperror(dns_server: DnsTestServer) -> None:
    result = _dmarc(dns_server, "down.example", None, [])
    assert (result.status, result.disposition) == (DmarcStatus.TEMPERROR, DmarcPolicy.NONE)
