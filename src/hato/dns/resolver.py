"""`DnsPythonResolver`: hato.model.dns.Resolver on dnspython's asyncio resolver, with a cache.

Theory: one dnspython `asyncresolver.Resolver` asks the configured servers (or the system's,
from /etc/resolv.conf) with the AD bit set in the query (RFC 6840 §5.7: a validating resolver
then tells us whether the answer was DNSSEC-validated). dnspython's own cache is off; `DnsCache`
keeps answers for their TTL. Every dnspython outcome becomes a DnsAnswer: NXDOMAIN, NODATA,
TEMPFAIL (SERVFAIL, REFUSED, timeout, no server: `NoNameservers`/`LifetimeTimeout`) or records.
The search list is never applied: mail names are absolute (RFC 5321 §2.3.5).

May import hato.model only (and dnspython).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.CAA import CAA
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TLSA import TLSA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from hato.dns.cache import DnsCache
from hato.model.dns import (
    AddressRecord,
    CaaRecord,
    DnsAnswer,
    DnsNameError,
    DnsStatus,
    HostRecord,
    MxRecord,
    RdType,
    Record,
    TlsaRecord,
    TxtRecord,
    normalize_name,
)


def parse_nameserver(text: str, default_port: int = 53) -> tuple[str, int]:
    """``"192.0.2.53"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (address, port).

    Raises ValueError. Only IP addresses: a name server given by name would need DNS itself.
    """
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not ADDRESS or ADDRESS:PORT")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port must be 1..65535")
    return int(text)


class DnsPythonResolver:
    """The production Resolver. `nameservers`: ``ADDRESS[:PORT]`` strings, or None for the
    system's; `port` applies where none is given; `timeout`: seconds for one whole query."""

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        cache: DnsCache | None = None,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(ns, port)) for ns in nameservers
            ]
        else:
            self._resolver.port = port
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._resolver.cache = None
        # RFC 6840 §5.7: set AD in the query to ask for the AD bit in the answer. EDNS0 (RFC 6891)
        # with a 1232-octet buffer (the DNS flag day 2020 value) so TXT/TLSA rarely need TCP.
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._resolver.use_edns(0, 0, 1232)
        self._cache = cache

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        key = normalize_name(name)
        if self._cache is not None and (hit := self._cache.get(key, rdtype)) is not None:
            return hit
        answer = await self._ask(key, rdtype)
        if self._cache is not None:
            self._cache.put(answer)
        return answer

    async def _ask(self, name: str, rdtype: RdType) -> DnsAnswer:
        try:
            qname = dns.name.from_text(name or ".")
        except dns.exception.DNSException as exc:
            raise DnsNameError(f"{name!r} is not a DNS name: {exc}") from None
        try:
            found = await self._resolver.resolve(
                qname, rdtype.value, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            return _nxdomain(name, rdtype, exc)
        except (dns.resolver.NoNameservers, dns.resolver.YXDOMAIN, dns.exception.Timeout) as exc:
            return DnsAnswer(name, rdtype, DnsStatus.TEMPFAIL, detail=_detail(exc))
        except dns.exception.DNSException as exc:  # malformed answers, CNAME loops
            return DnsAnswer(name, rdtype, DnsStatus.TEMPFAIL, detail=_detail(exc))
        authenticated = bool(found.response.flags & dns.flags.AD)
        canonical = normalize_name(found.canonical_name.to_text())
        ttl = found.chaining_result.minimum_ttl
        records = tuple(r for rd in (found.rrset or ()) if (r := _record(rd)) is not None)
        status = DnsStatus.OK if records else DnsStatus.NODATA
        return DnsAnswer(name, rdtype, status, records, ttl, authenticated, canonical)


def _nxdomain(name: str, rdtype: RdType, exc: dns.resolver.NXDOMAIN) -> DnsAnswer:
    ttl, authenticated, canonical = 0, False, name
    responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
    for response in responses.values():
        if not isinstance(response, dns.message.QueryMessage):
            continue
        authenticated = bool(response.flags & dns.flags.AD)
        try:
            # RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM) of the authority SOA.
            chain = response.resolve_chaining()
            ttl = chain.minimum_ttl
            canonical = normalize_name(chain.canonical_name.to_text())
        except dns.exception.DNSException:
            ttl = 0
    return DnsAnswer(
        name, rdtype, DnsStatus.NXDOMAIN, (), ttl, authenticated, canonical, detail=str(exc)
    )


def _detail(exc: dns.exception.DNSException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _host(name: dns.name.Name) -> str:
    return normalize_name(name.to_text())


def _record(rd: dns.rdata.Rdata) -> Record | None:
    match rd:
        case A() | AAAA():
            return AddressRecord(str(ipaddress.ip_address(rd.address)))
        case TXT():
            return TxtRecord(tuple(rd.strings))
        case MX():
            return MxRecord(rd.preference, _host(rd.exchange))
        case PTR() | CNAME():
            return HostRecord(_host(rd.target))
        case TLSA():
            return TlsaRecord(rd.usage, rd.selector, rd.mtype, bytes(rd.cert))
        case CAA():
            return CaaRecord(
                rd.flags, rd.tag.decode("ascii", "replace"), rd.value.decode("utf-8", "replace")
            )
    return None
