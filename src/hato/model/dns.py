"""The DNS seam: `Resolver`, the answers it gives as values, and DNS name helpers.

Theory of operation: every room that needs DNS (policy's DNSBL, delivery's MX/TLSA, authcheck's
SPF/DKIM/DMARC/PTR) gets a `Resolver` passed in and awaits `query(name, rdtype)`. The answer
never raises for a DNS outcome: it is a `DnsAnswer` whose `status` tells apart records (OK), a
name that does not exist (NXDOMAIN), a name without records of that type (NODATA), and "could
not find out" (TEMPFAIL: SERVFAIL, timeout, no server answered). The callers' RFCs treat those
four differently (RFC 7208 §5 "temperror" vs "void lookup", RFC 7505 null MX, RFC 7672 §2.2
DANE needs the AD bit), so they must never be folded together.

Names are absolute, written without the trailing dot, compared case-insensitively; records carry
host names lower-case without the trailing dot ("" is the root, e.g. a null MX's exchange).

Must not import anything of hato, nor any I/O module: stdlib values only.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol


class RdType(enum.StrEnum):
    """The record types Hato asks for."""

    A = "A"
    AAAA = "AAAA"
    MX = "MX"
    TXT = "TXT"
    PTR = "PTR"
    CNAME = "CNAME"
    TLSA = "TLSA"
    CAA = "CAA"


class DnsStatus(enum.Enum):
    OK = "ok"  # records of the type asked for (`records` is not empty)
    NXDOMAIN = "nxdomain"  # RFC 8020: the name does not exist (RCODE 3)
    NODATA = "nodata"  # RFC 2308 §2.2: the name exists, no records of that type
    TEMPFAIL = "tempfail"  # SERVFAIL, timeout, refused, no server reachable: try again later


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """A or AAAA: the address in its canonical text form (``192.0.2.1``, ``2001:db8::1``)."""

    address: str


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """TXT: the record's character-strings, as sent (each at most 255 octets)."""

    strings: tuple[bytes, ...]

    @property
    def joined(self) -> bytes:
        # RFC 7208 §3.3 and RFC 6376 §3.6.2.2: the strings are concatenated without spaces.
        return b"".join(self.strings)

    @property
    def text(self) -> str:
        """`joined` as text; bytes that are not UTF-8 become U+FFFD."""
        return self.joined.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str  # "" for RFC 7505's null MX (exchange ".")


@dataclass(frozen=True, slots=True)
class HostRecord:
    """PTR or CNAME: the host name it points to."""

    host: str


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """RFC 6698 §2.1: certificate usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CaaRecord:
    """RFC 8659 §4.1: flags, property tag (e.g. "issue"), value (e.g. "letsencrypt.org")."""

    flags: int
    tag: str
    value: str


Record = AddressRecord | TxtRecord | MxRecord | HostRecord | TlsaRecord | CaaRecord


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What one query found.

    `ttl`: seconds the answer may be reused (for NXDOMAIN/NODATA the negative TTL of RFC 2308
    §5; 0 for TEMPFAIL). `authenticated`: the resolver set the AD bit (RFC 4035 §3.2.3), i.e.
    it validated the answer with DNSSEC; only meaningful with a trusted (local) resolver.
    `canonical_name`: the name at the end of any CNAME chain (RFC 7672 §2.2.2 needs it).
    `detail`: why a TEMPFAIL happened, for the log only.
    """

    name: str
    rdtype: RdType
    status: DnsStatus
    records: tuple[Record, ...] = ()
    ttl: int = 0
    authenticated: bool = False
    canonical_name: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is DnsStatus.OK

    def addresses(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.records if isinstance(r, AddressRecord))

    def texts(self) -> tuple[bytes, ...]:
        """Each TXT record's strings joined (one item per record)."""
        return tuple(r.joined for r in self.records if isinstance(r, TxtRecord))

    def mx(self) -> tuple[MxRecord, ...]:
        """MX records, lowest preference first (RFC 5321 §5.1)."""
        found = (r for r in self.records if isinstance(r, MxRecord))
        return tuple(sorted(found, key=lambda r: (r.preference, r.host)))

    def hosts(self) -> tuple[str, ...]:
        return tuple(r.host for r in self.records if isinstance(r, HostRecord))

    def tlsa(self) -> tuple[TlsaRecord, ...]:
        return tuple(r for r in self.records if isinstance(r, TlsaRecord))

    def caa(self) -> tuple[CaaRecord, ...]:
        return tuple(r for r in self.records if isinstance(r, CaaRecord))


class DnsNameError(ValueError):
    """The name cannot be put in a query (empty label, label over 63 octets, name over 255)."""


class Resolver(Protocol):
    """Asks DNS. Implemented by hato.dns.DnsPythonResolver; tests use a fake or a test server."""

    async def query(self, name: str, rdtype: RdType) -> DnsAnswer:
        """Records of `rdtype` at `name` (absolute; no search list is applied).

        Never raises for DNS outcomes (see DnsStatus). Raises DnsNameError when `name` is not
        a valid DNS name. CNAMEs are followed (except for rdtype CNAME).
        """
        ...


def normalize_name(name: str) -> str:
    """Lower-case, no trailing dot: the form names are compared and cached in."""
    return name.rstrip(".").lower()


def reverse_name(ip: str) -> str:
    """The PTR query name of an address: RFC 1035 §3.5 in-addr.arpa, RFC 3596 §2.5 ip6.arpa."""
    return ipaddress.ip_address(ip).reverse_pointer


def reversed_labels(ip: str) -> str:
    """The address part of a reverse name without the .arpa suffix, as DNSBLs use it
    (RFC 5782 §2.1 octets, §2.4 nibbles): ``192.0.2.1`` -> ``1.2.0.192``."""
    address = ipaddress.ip_address(ip)
    suffix = ".in-addr.arpa" if address.version == 4 else ".ip6.arpa"
    return address.reverse_pointer.removesuffix(suffix)
