"""Network policy, the OP25B model: which clients may connect to which listener.

Theory: the config names client networks, each a list of CIDRs and/or a DNSBL zone that lists
dynamic (consumer) address ranges, PBL-style. A listener refuses clients in its
`refuse` networks (the `mx` port refuses dynamic ranges: they must use their provider's
submission server) and, when its `allow` list is not empty, admits only clients in one of those
(a `submission` port limited to the office). CIDRs are checked first; a DNSBL is asked only when
its answer could change the verdict. A DNSBL that cannot be asked (TEMPFAIL) counts as "not
listed" and the verdict says so, for the log: failing open keeps mail flowing when the list is
down, which is what PBL-style lists ask of their users. For an allow list that would lock the
client out over a DNS hiccup, so there the answer is a temporary 421 instead.

May import hato.model only. DNS only through the Resolver seam.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import assert_never

from hato.model import Reply
from hato.model.dns import DnsStatus, RdType, Resolver, reversed_labels
from hato.policy.decision import Accept, Decision, Defer, Reject

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 5321 §3.1: a server may refuse a connection by answering 554 in place of the greeting;
# RFC 3463 X.7.1: delivery not authorized. The text points home users to the submission port
# (RFC 6409 §1: port 587 is where their own provider takes their mail).
DYNAMIC_REFUSED = Reply(
    554,
    "5.7.1",
    "Client host in a dynamic range; send through your provider's submission server (port 587)",
)
NOT_ALLOWED = Reply(554, "5.7.1", "Client host not allowed on this port")
# RFC 3463 X.4.3: directory (DNS) server failure; 421 closes, the client retries (RFC 5321 §3.8).
LIST_UNAVAILABLE = Reply(421, "4.4.3", "Cannot check the client address now; try again later")


@dataclass(frozen=True, slots=True)
class ClientNetwork:
    """One [[network]]: CIDRs and/or a DNSBL zone listing dynamic ranges."""

    name: str
    cidrs: tuple[IPNetwork, ...] = ()
    dnsbl: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkTable:
    networks: Mapping[str, ClientNetwork] = field(default_factory=dict)

    @classmethod
    def of(cls, networks: Iterable[ClientNetwork]) -> NetworkTable:
        return cls({n.name: n for n in networks})

    def get(self, name: str) -> ClientNetwork:
        try:
            return self.networks[name]
        except KeyError:
            raise KeyError(f"no [[network]] named {name!r}") from None


@dataclass(frozen=True, slots=True)
class ListenerNetworkRules:
    """A listener's `refuse_networks` and `allow_networks` (empty allow = everyone)."""

    refuse: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()


class Listed(enum.Enum):
    YES = "listed"
    NO = "not-listed"
    UNKNOWN = "unknown"  # the DNSBL could not be asked (TEMPFAIL) or answered an error code


@dataclass(frozen=True, slots=True)
class NetworkMatch:
    """How one network matched the client, for the log (`event=network-match` ...)."""

    network: str
    listed: Listed
    via: str  # "cidr", "dnsbl", or "" when not listed
    detail: str = ""  # e.g. the DNSBL's answer or why it failed


@dataclass(frozen=True, slots=True)
class ConnectionVerdict:
    decision: Decision
    matches: tuple[NetworkMatch, ...] = ()

    @property
    def unknown(self) -> tuple[NetworkMatch, ...]:
        """The networks whose DNSBL could not be asked: log these (`event=dnsbl-tempfail`)."""
        return tuple(m for m in self.matches if m.listed is Listed.UNKNOWN)


async def connection_decision(
    ip: str, rules: ListenerNetworkRules, networks: NetworkTable, resolver: Resolver
) -> Decision:
    """Accept, or the 554 5.7.1 (or 421 4.4.3) to answer in place of the greeting."""
    return (await connection_check(ip, rules, networks, resolver)).decision


async def connection_check(
    ip: str, rules: ListenerNetworkRules, networks: NetworkTable, resolver: Resolver
) -> ConnectionVerdict:
    """`connection_decision` with the reasons, so the caller can log them."""
    matches: list[NetworkMatch] = []
    for name in rules.refuse:
        match = await network_match(ip, networks.get(name), resolver)
        matches.append(match)
        if match.listed is Listed.YES:
            return ConnectionVerdict(Reject(DYNAMIC_REFUSED), tuple(matches))
    if not rules.allow:
        return ConnectionVerdict(Accept(), tuple(matches))
    for name in rules.allow:
        match = await network_match(ip, networks.get(name), resolver)
        matches.append(match)
        if match.listed is Listed.YES:
            return ConnectionVerdict(Accept(), tuple(matches))
    if any(m.listed is Listed.UNKNOWN for m in matches[len(rules.refuse) :]):
        return ConnectionVerdict(Defer(LIST_UNAVAILABLE), tuple(matches))
    return ConnectionVerdict(Reject(NOT_ALLOWED), tuple(matches))


async def network_match(ip: str, network: ClientNetwork, resolver: Resolver) -> NetworkMatch:
    """Whether `ip` is in `network`: by CIDR, else by asking its DNSBL."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # RFC 4291 §2.5.5.2: ::ffff:a.b.c.d is an IPv4 client
    if any(address in cidr for cidr in network.cidrs):
        return NetworkMatch(network.name, Listed.YES, "cidr")
    if network.dnsbl is None:
        return NetworkMatch(network.name, Listed.NO, "")
    listed, detail = await dnsbl_lookup(str(address), network.dnsbl, resolver)
    return NetworkMatch(network.name, listed, "dnsbl" if listed is Listed.YES else "", detail)


# Spamhaus-style error answers (127.255.255.0/24: "query refused", "bad resolver") mean the
# list did not answer the question; they must never count as "listed".
_DNSBL_ERRORS = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class DnsblAnswer:
    """What one DNSBL zone said of one address: listed or not (or unknown), the answer
    codes (for a pattern such as 127.0.0.[2..11]) and a detail for the log."""

    listed: Listed
    codes: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    detail: str = ""


async def dnsbl_lookup(ip: str, zone: str, resolver: Resolver) -> tuple[Listed, str]:
    """Ask DNSBL `zone` about `ip`: (listed or not or unknown, detail for the log)."""
    answer = await dnsbl_answer(ip, zone, resolver)
    return answer.listed, answer.detail


async def dnsbl_answer(ip: str, zone: str, resolver: Resolver) -> DnsblAnswer:
    """Ask DNSBL `zone` about `ip`, keeping the answer codes."""
    # RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: nibbles reversed), then the zone.
    name = f"{reversed_labels(ip)}.{zone.rstrip('.')}"
    answer = await resolver.query(name, RdType.A)
    match answer.status:
        case DnsStatus.NXDOMAIN | DnsStatus.NODATA:
            # RFC 5782 §2.1: no A record at the name means not listed.
            return DnsblAnswer(Listed.NO)
        case DnsStatus.TEMPFAIL:
            return DnsblAnswer(Listed.UNKNOWN, detail=answer.detail or "tempfail")
        case DnsStatus.OK:
            codes = tuple(ipaddress.ip_address(a) for a in answer.addresses())
            shown = ",".join(str(c) for c in codes)
            if any(c in _DNSBL_ERRORS for c in codes):
                return DnsblAnswer(Listed.UNKNOWN, detail=f"error answer {shown}")
            # RFC 5782 §2.1: a listed entry has an A record, conventionally in 127.0.0.0/8.
            if any(c in _LOOPBACK for c in codes):
                return DnsblAnswer(Listed.YES, codes, shown)
            return DnsblAnswer(Listed.UNKNOWN, detail=f"answer outside 127.0.0.0/8: {shown}")
        case _:
            assert_never(answer.status)
