"""Where mail for a domain goes: MX lookup, implicit MX, null MX, host addresses, loops.

Theory of operation: `route_domain` asks the Resolver for the domain's MX records and turns the
answer into an ordered tuple of `MxHost` (RFC 5321 §5.1: lowest preference first, a random
order among equal preferences), or into a `RouteError` carrying the reply every recipient of the
domain gets. `host_addresses` then resolves one host to its AAAA and A addresses (both families
are tried). A relay target from the transport table (``host:port`` or Postfix's ``[host]:port``)
is parsed by `parse_relay`. Nothing here opens a connection.

Must not import anything of hato but model.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import groupby

from hato.model import Reply
from hato.model.dns import DnsAnswer, DnsStatus, MxRecord, RdType, Resolver, normalize_name

SMTP_PORT = 25

NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Recipient domain does not exist")
NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail")
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure looking up the recipient domain")
NO_ADDRESS = Reply(451, "4.4.4", "No address found for the recipient domain's mail servers")
MAIL_LOOP = Reply(554, "5.4.6", "Mail loops back to myself")


@dataclass(frozen=True, slots=True)
class MxHost:
    """One host to try: a DNS name (or an IP literal), its MX preference, and whether the
    answer that named it was DNSSEC-validated (RFC 7672 §2.2.1 needs a secure MX RRset)."""

    name: str
    preference: int = 0
    secure: bool = False
    implicit: bool = False  # RFC 5321 §5.1: the domain itself, as there is no MX


@dataclass(frozen=True, slots=True)
class Route:
    hosts: tuple[MxHost, ...]


@dataclass(frozen=True, slots=True)
class RouteError:
    """The domain cannot be routed now (`reply.is_transient`) or ever."""

    reply: Reply
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """A transport table's ``relay``/``lmtp`` destination: a host name or IP, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}"


def parse_relay(text: str, default_port: int = SMTP_PORT) -> RelayTarget:
    """``host``, ``host:port``, ``[host]:port`` or ``[2001:db8::1]:port`` -> RelayTarget.

    As in Postfix, brackets mark a host that is used as is; Hato never does an MX lookup on a
    relay host, so both forms mean the same here. Raises ValueError naming the valid forms.
    """
    host, port = text.strip(), default_port
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or not inner or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not HOST, HOST:PORT or [HOST]:PORT")
        host, port_text = inner, rest[1:]
        if rest:
            port = _port(port_text, text)
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(port_text, text)
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"{text!r} is not HOST, HOST:PORT or [HOST]:PORT")
    return RelayTarget(host.lower(), port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port must be 1..65535")
    return int(text)


def order_mx(records: Sequence[MxRecord], rng: random.Random) -> list[MxRecord]:
    """RFC 5321 §5.1: lowest preference first; hosts of equal preference in a random order
    (to spread the load among them)."""
    ordered: list[MxRecord] = []
    by_pref = sorted(records, key=lambda r: r.preference)
    for _pref, group in groupby(by_pref, key=lambda r: r.preference):
        same = list(group)
        rng.shuffle(same)
        ordered.extend(same)
    return ordered


def _drop_self(records: list[MxRecord], own_names: Collection[str]) -> list[MxRecord] | None:
    """RFC 5321 §5.1: if we are one of the MX hosts, use only the hosts preferred to us (lower
    preference); None when nothing is left (the mail would loop back to us)."""
    mine = [r.preference for r in records if r.host in own_names]
    if not mine:
        return records
    kept = [r for r in records if r.preference < min(mine)]
    return kept or None


async def route_domain(
    resolver: Resolver, domain: str, rng: random.Random, own_names: Collection[str] = ()
) -> Route | RouteError:
    """The hosts to try for `domain` (an A-label domain name), in order."""
    name = normalize_name(domain)
    answer = await resolver.query(name, RdType.MX)
    match answer.status:
        case DnsStatus.TEMPFAIL:
            return RouteError(DNS_TEMPFAIL, f"MX {name}: {answer.detail}")
        case DnsStatus.NXDOMAIN:
            # RFC 5321 §5.1: a domain that does not exist gets no mail (permanent).
            return RouteError(NO_SUCH_DOMAIN, f"MX {name}: NXDOMAIN")
        case DnsStatus.NODATA:
            # RFC 5321 §5.1: no MX records -> the domain itself is the implicit MX.
            return Route((MxHost(name, 0, answer.authenticated, implicit=True),))
        case DnsStatus.OK:
            return _route_from_mx(answer, name, rng, own_names)


def _route_from_mx(
    answer: DnsAnswer, name: str, rng: random.Random, own_names: Collection[str]
) -> Route | RouteError:
    records = list(answer.mx())
    # RFC 7505 §3: a single MX with exchange "." (null MX) means "accepts no mail"; it is
    # a permanent failure, reported with 5.1.10 (RFC 7505 §4.2).
    if any(r.host == "" for r in records):
        if len(records) == 1:
            return RouteError(NULL_MX, f"MX {name}: null MX")
        # RFC 7505 §3: a null MX next to other MX records is a misconfiguration; ignore it.
        records = [r for r in records if r.host != ""]
    own = {normalize_name(n) for n in own_names}
    kept = _drop_self(records, own)
    if kept is None:
        return RouteError(MAIL_LOOP, f"MX {name}: we are the best MX")
    return Route(
        tuple(MxHost(r.host, r.preference, answer.authenticated) for r in order_mx(kept, rng))
    )


@dataclass(frozen=True, slots=True)
class HostAddresses:
    """A host's addresses, IPv6 first (both families are tried), and whether the lookups
    could not be completed (a TEMPFAIL on one family is not "no address")."""

    addresses: tuple[str, ...]
    tempfail: bool = False
    detail: str = ""


async def host_addresses(resolver: Resolver, host: str) -> HostAddresses:
    """AAAA and A records of `host`; an IP literal is its own address."""
    literal = ip_literal(host)
    if literal is not None:
        return HostAddresses((literal,))
    six = await resolver.query(host, RdType.AAAA)
    four = await resolver.query(host, RdType.A)
    failed = [a for a in (six, four) if a.status is DnsStatus.TEMPFAIL]
    addresses = six.addresses() + four.addresses()
    detail = "; ".join(f"{a.rdtype} {host}: {a.detail}" for a in failed)
    return HostAddresses(addresses, tempfail=bool(failed), detail=detail)


def ip_literal(text: str) -> str | None:
    """The address of an IP literal host (``192.0.2.1``, ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``,
    ``2001:db8::1``), else None. RFC 5321 §4.1.3 address literals."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    """Loopback, unspecified or link-local-ish addresses that mean "this machine"."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified
