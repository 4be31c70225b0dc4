"""Screening an mx client before DATA, cheaply: weighted DNSBL/DNSWL scores, the early
talker, the connection rate (postscreen's ideas, Postfix's syntax).

Theory: every `DnsblSite` names a list zone, which answers count (a pattern per octet, as in
Postfix's ``zen.spamhaus.org=127.0.0.[2..11]*3``) and a weight; a negative weight makes it
an allow list (DNSWL). Each zone is asked once per client, all zones at once, through the
Resolver seam (whose cache keeps every answer for its DNS TTL, RFC 1035 §3.2.1); a site adds
its weight when any answer matches its pattern. A total at or above the threshold refuses the
connection with a 554 5.7.1 naming the lists that scored. A list that cannot be asked counts
as not listed (fail open, like `networks.py`), and the score says which, for the log. A
negative contribution marks the client as allow-listed: greylisting spares it.

May import hato.model only. DNS only through the Resolver seam.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from hato.model import Reply
from hato.model.dns import Resolver
from hato.policy.decision import Accept, Decision, Reject
from hato.policy.networks import Listed, dnsbl_answer

# RFC 5321 §4.3.1: the client waits for the greeting before its first command; one that
# talks first is a bot that never read it (Postfix's pregreet test). RFC 3463 X.5.1: invalid
# command (out of sequence).
EARLY_TALKER = Reply(554, "5.5.1", "Protocol error: command sent before the greeting")
# RFC 5321 §3.8 / §4.2.5: 421 closes the connection, the client retries later; RFC 3463
# X.7.0: other security or policy status.
RATE_EXCEEDED = Reply(421, "4.7.0", "Too many connections from your network; try again later")

Octet = tuple[tuple[int, int], ...]  # inclusive ranges of one octet of an answer


@dataclass(frozen=True, slots=True)
class DnsblSite:
    """One entry of `dnsbl_sites`: a zone, which answers count (None: any in 127.0.0.0/8,
    RFC 5782 §2.1) and its weight (negative for an allow list)."""

    zone: str
    weight: int = 1
    pattern: tuple[Octet, Octet, Octet, Octet] | None = None

    def matches(self, codes: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
        if self.pattern is None:
            return bool(codes)
        for code in codes:
            if code.version != 4:
                continue
            octets = code.packed
            if all(
                any(low <= octet <= high for low, high in ranges)
                for octet, ranges in zip(octets, self.pattern, strict=True)
            ):
                return True
        return False


@dataclass(frozen=True, slots=True)
class DnsblScore:
    """What the lists said of one client."""

    total: int = 0
    listed: tuple[str, ...] = ()  # zones that added a positive weight, in site order
    allowed: tuple[str, ...] = ()  # zones that added a negative weight (DNSWL)
    unknown: tuple[tuple[str, str], ...] = ()  # (zone, why) of lists that could not be asked


async def dnsbl_score(ip: str, sites: Sequence[DnsblSite], resolver: Resolver) -> DnsblScore:
    """Ask every zone of `sites` about `ip` (each once, all at once) and add up the weights."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # RFC 4291 §2.5.5.2: ::ffff:a.b.c.d is an IPv4 client
    zones = list(dict.fromkeys(site.zone for site in sites))
    answers = await asyncio.gather(*(dnsbl_answer(str(address), z, resolver) for z in zones))
    by_zone = dict(zip(zones, answers, strict=True))
    total, listed, allowed = 0, list[str](), list[str]()
    for site in sites:
        answer = by_zone[site.zone]
        if answer.listed is not Listed.YES or not site.matches(answer.codes):
            continue
        total += site.weight
        names = listed if site.weight > 0 else allowed
        if site.weight and site.zone not in names:
            names.append(site.zone)
    unknown = tuple((z, a.detail) for z, a in by_zone.items() if a.listed is Listed.UNKNOWN)
    return DnsblScore(total, tuple(listed), tuple(allowed), unknown)


def dnsbl_decision(ip: str, score: DnsblScore, threshold: int) -> Decision:
    """Reject at or above `threshold`, naming the lists (Postfix's and Spamhaus's wording)."""
    if score.total < threshold or not score.listed:
        return Accept()
    # RFC 5321 §3.1: 554 in place of the greeting; RFC 3463 X.7.1: delivery not authorized.
    lists = ", ".join(score.listed)
    return Reject(Reply(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {lists}"))


def client_key(ip: str, *, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The network a client is counted by: its IPv4 address (or /`ipv4_prefix`), its IPv6
    /64 (RFC 4291 §2.5.1: one end site's subnet; one host may hold all of it)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
