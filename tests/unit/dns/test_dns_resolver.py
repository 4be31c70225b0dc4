"""DnsPythonResolver against the in-process test DNS server: every status, the AD bit, TTLs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer, ZoneDict
from hato.dns import DnsCache, DnsPythonResolver, parse_nameserver
from hato.model.dns import (
    DnsAnswer,
    DnsNameError,
    DnsStatus,
    HostRecord,
    MxRecord,
    RdType,
    TlsaRecord,
    TxtRecord,
)
from kit.clock import FakeClock

DIGEST = bytes(range(32))  # RFC 6698 §2.1.3: matching type 1 is a SHA-256 digest

ZONE: ZoneDict = {
    "example.org": {
        "A": ["192.0.2.1", "192.0.2.2"],
        "AAAA": ["2001:db8::0001"],
        "MX": [(20, "mx2.example.org"), (10, "MX1.Example.org")],
        "TXT": ["v=spf1 -all", ("v=DKIM1; p=", "ABCD")],
    },
    "www.example.org": {"CNAME": ["example.org"]},
    "null.example": {"MX": [(0, "")]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["mail.example.org"]},
    "_25._tcp.mx1.example.org": {"TLSA": [(3, 1, 1, DIGEST.hex())]},
    "deep.sub.example.net": {"A": ["192.0.2.9"]},
}


def ask(resolver: DnsPythonResolver, name: str, rdtype: RdType) -> DnsAnswer:
    return asyncio.run(resolver.query(name, rdtype))


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE, default_ttl=300, negative_ttl=60) as server:
        yield server


def resolver_for(server: DnsTestServer, cache: DnsCache | None = None) -> DnsPythonResolver:
    return DnsPythonResolver([server.nameserver], timeout=HATO_DNS_TIMEOUT, cache=cache)


def test_a_and_aaaa(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    a = ask(resolver, "example.org", RdType.A)
    assert a.status is DnsStatus.OK
    assert sorted(a.addresses()) == ["192.0.2.1", "192.0.2.2"]
    assert a.ttl == 300
    assert not a.authenticated
    aaaa = ask(resolver, "EXAMPLE.org.", RdType.AAAA)
    assert aaaa.addresses() == ("2001:db8::1",)


def test_txt_strings_kept_and_joined(dns_server: DnsTestServer) -> None:
    answer = ask(resolver_for(dns_server), "example.org", RdType.TXT)
    assert sorted(answer.texts()) == [b"v=DKIM1; p=ABCD", b"v=spf1 -all"]
    multi = [r for r in answer.records if isinstance(r, TxtRecord) and len(r.strings) == 2]
    assert multi[0].strings == (b"v=DKIM1; p=", b"ABCD")
    assert multi[0].text == "v=DKIM1; p=ABCD"


def test_mx_sorted_lower_case_and_null_mx(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    answer = ask(resolver, "example.org", RdType.MX)
    assert answer.mx() == (MxRecord(10, "mx1.example.org"), MxRecord(20, "mx2.example.org"))
    null = ask(resolver, "null.example", RdType.MX)
    assert null.mx() == (MxRecord(0, ""),)


def test_ptr_cname_and_tlsa(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    ptr = ask(resolver, "1.2.0.192.in-addr.arpa", RdType.PTR)
    assert ptr.records == (HostRecord("mail.example.org"),)
    via_cname = ask(resolver, "www.example.org", RdType.A)
    assert sorted(via_cname.addresses()) == ["192.0.2.1", "192.0.2.2"]
    assert via_cname.canonical_name == "example.org"
    cname = ask(resolver, "www.example.org", RdType.CNAME)
    assert cname.hosts() == ("example.org",)
    tlsa = ask(resolver, "_25._tcp.mx1.example.org", RdType.TLSA)
    assert tlsa.tlsa() == (TlsaRecord(3, 1, 1, DIGEST),)


def test_nxdomain_and_nodata_are_told_apart(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    missing = ask(resolver, "nope.example.org", RdType.A)
    assert missing.status is DnsStatus.NXDOMAIN
    assert missing.ttl == 60  # RFC 2308 §5: the SOA MINIMUM
    nodata = ask(resolver, "null.example", RdType.A)
    assert nodata.status is DnsStatus.NODATA
    assert nodata.records == ()
    assert nodata.ttl == 60
    # RFC 8020: a name with names below it exists (empty non-terminal): NODATA, not NXDOMAIN.
    ent = ask(resolver, "sub.example.net", RdType.A)
    assert ent.status is DnsStatus.NODATA


def test_servfail_is_tempfail_and_not_cached(dns_server: DnsTestServer) -> None:
    clock = FakeClock(1000.0, 1000.0)
    resolver = resolver_for(dns_server, DnsCache(clock))
    dns_server.servfail.add("example.org")
    answer = ask(resolver, "example.org", RdType.MX)
    assert answer.status is DnsStatus.TEMPFAIL
    assert answer.detail
    dns_server.servfail.clear()
    again = ask(resolver, "example.org", RdType.MX)
    assert again.status is DnsStatus.OK


def test_timeout_is_tempfail(dns_server: DnsTestServer) -> None:
    dns_server.drop.add("example.org")
    resolver = DnsPythonResolver([dns_server.nameserver], timeout=0.3)
    answer = ask(resolver, "example.org", RdType.A)
    assert answer.status is DnsStatus.TEMPFAIL


def test_ad_bit(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    dns_server.authenticated_names.add("_25._tcp.mx1.example.org")
    signed = ask(resolver, "_25._tcp.mx1.example.org", RdType.TLSA)
    unsigned = ask(resolver, "example.org", RdType.MX)
    assert signed.authenticated
    assert not unsigned.authenticated
    dns_server.authenticated = True
    assert ask(resolver, "nope.example.org", RdType.TLSA).authenticated


def test_cache_respects_ttl(dns_server: DnsTestServer) -> None:
    clock = FakeClock(1000.0, 1000.0)
    resolver = resolver_for(dns_server, DnsCache(clock))
    first = ask(resolver, "example.org", RdType.MX)
    clock.advance(100)
    second = ask(resolver, "Example.ORG", RdType.MX)
    assert second.mx() == first.mx()
    assert second.ttl == 200
    assert dns_server.queries_for("example.org", "MX") == 1
    clock.advance(201)
    ask(resolver, "example.org", RdType.MX)
    assert dns_server.queries_for("example.org", "MX") == 2


def test_negative_answers_cached_for_negative_ttl(dns_server: DnsTestServer) -> None:
    clock = FakeClock(1000.0, 1000.0)
    resolver = resolver_for(dns_server, DnsCache(clock))
    ask(resolver, "nope.example.org", RdType.A)
    clock.advance(59)
    assert ask(resolver, "nope.example.org", RdType.A).status is DnsStatus.NXDOMAIN
    assert dns_server.queries_for("nope.example.org", "A") == 1
    clock.advance(2)
    ask(resolver, "nope.example.org", RdType.A)
    assert dns_server.queries_for("nope.example.org", "A") == 2


def test_zone_text_and_tcp_sized_answers() -> None:
    big = " ".join(f'"{"x" * 200}{i}"' for i in range(12))  # > 2400 octets: needs TCP
    zone = f"big.example. 120 IN TXT {big}\nhost.example. 120 IN A 192.0.2.7\n"
    with DnsTestServer(zone) as server:
        resolver = resolver_for(server)
        host = ask(resolver, "host.example", RdType.A)
        assert host.addresses() == ("192.0.2.7",)
        assert host.ttl == 120
        text = ask(resolver, "big.example", RdType.TXT)
        assert len(text.texts()[0]) == 10 * 201 + 2 * 202
        assert server.queries_for("big.example", "TXT") == 2  # UDP truncated, then TCP


def test_invalid_name_raises() -> None:
    resolver = DnsPythonResolver(["127.0.0.1:9"], timeout=0.2)
    with pytest.raises(DnsNameError):
        ask(resolver, "a" * 64 + ".example", RdType.A)
    with pytest.raises(DnsNameError):
        ask(resolver, "a..example", RdType.A)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1]x", ""])
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)
