"""[screen] of hato.toml: screening mx clients before DATA (postscreen's ideas): weighted
DNSBL/DNSWL sites, an allow list, the early-talker wait, the connection rate, greylisting.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path. Nothing here is on unless its key says so.

Must not import anything of hato but model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    field_validator,
)

from hato.config.values import IPNetwork, at_least, parse_cidr, parse_domain_name, show

_SECTION = ConfigDict(frozen=True, extra="forbid")
_SITE = re.compile(r"(?P<zone>[^=*\s]+)(?:=(?P<pattern>[^*\s]+))?(?:\*(?P<weight>-?\d+))?")
_PATTERN = re.compile(r"\.".join([r"(\d+|\[[^\]]*\])"] * 4))
_EXAMPLE = '"zen.spamhaus.org=127.0.0.[2..11]*3"'
MAX_PREGREET_WAIT = 30.0  # seconds: RFC 5321 §4.5.3.2.1 has clients wait 5 minutes for it

Octet = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class DnsblSiteSpec:
    """One `dnsbl_sites` entry, parsed: zone, weight, one set of ranges per answer octet."""

    zone: str
    weight: int
    pattern: tuple[Octet, Octet, Octet, Octet] | None


def _octet(text: str, whole: str) -> Octet:
    """`2`, `[2..11]`, `[2;4;9..11]` (Postfix's postscreen_dnsbl_sites syntax)."""
    items = text[1:-1].split(";") if text.startswith("[") and text.endswith("]") else [text]
    ranges = []
    for item in items:
        low, dots, high = item.partition("..")
        if not low.isdigit() or (dots and not high.isdigit()):
            raise ValueError(f"{show(whole)}: {text!r} is not an octet, [a..b] or [a;b;c]")
        pair = (int(low), int(high) if dots else int(low))
        if not 0 <= pair[0] <= pair[1] <= 255:
            raise ValueError(f"{show(whole)}: {text!r} is outside 0..255 or reversed")
        ranges.append(pair)
    return tuple(ranges)


def parse_dnsbl_site(value: object) -> DnsblSiteSpec:
    """``ZONE[=PATTERN][*WEIGHT]``: e.g. ``list.dnswl.org=127.0.[0..255].[1..3]*-2``."""
    match = _SITE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{show(value)} is not ZONE[=PATTERN][*WEIGHT] (e.g. {_EXAMPLE})")
    zone = parse_domain_name(match["zone"])
    pattern = None
    if match["pattern"]:
        octets = _PATTERN.fullmatch(match["pattern"])
        if octets is None:
            raise ValueError(f"{show(value)}: the pattern needs 4 octets (e.g. {_EXAMPLE})")
        a, b, c, d = (_octet(o, str(value)) for o in octets.groups())
        pattern = (a, b, c, d)
    weight = int(match["weight"]) if match["weight"] else 1
    if weight == 0:
        raise ValueError(f"{show(value)}: a weight of 0 counts nothing; leave the site out")
    return DnsblSiteSpec(zone, weight, pattern)


def _seconds_at_least(minimum: float) -> PlainValidator:
    def parse(value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{show(value)} is not a number of seconds (example: 300)")
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g} seconds, got {value:g}")
        return float(value)

    return PlainValidator(parse)


def _pregreet(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a number of seconds (example: 2)")
    if not 0 <= value <= MAX_PREGREET_WAIT:
        raise ValueError(f"must be 0 (off) to {MAX_PREGREET_WAIT:g} seconds, got {value:g}")
    return float(value)


class ScreenSettings(BaseModel):
    """[screen]: what an mx client must pass before it may send (never on submission)."""

    model_config = _SECTION

    dnsbl_sites: tuple[Annotated[DnsblSiteSpec, PlainValidator(parse_dnsbl_site)], ...] = Field(
        (),
        description="an array of ZONE[=PATTERN][*WEIGHT], e.g. "
        '["zen.spamhaus.org=127.0.0.[2..11]*3", "list.dnswl.org=127.0.[0..255].[1..3]*-2"]',
    )
    dnsbl_threshold: StrictInt = Field(1, description="an integer, at least 1")
    allow: tuple[Annotated[IPNetwork, PlainValidator(parse_cidr)], ...] = Field(
        (), description='an array of CIDRs never screened, e.g. ["192.0.2.0/24"]'
    )
    pregreet_wait: Annotated[float, PlainValidator(_pregreet)] = Field(
        0.0, description=f"seconds, 0 (off) to {MAX_PREGREET_WAIT:g}, e.g. 3"
    )
    pregreet_ttl: Annotated[float, _seconds_at_least(0)] = Field(
        86_400.0, description="seconds, at least 0 (0: every connection waits)"
    )
    connection_rate: StrictInt = Field(
        0, description="connections per minute per client (IPv6: per /64), 0 = no limit"
    )
    greylist: StrictBool = Field(False, description="true or false")
    greylist_delay: Annotated[float, _seconds_at_least(0)] = Field(
        300.0, description="seconds, at least 0"
    )
    greylist_retry_window: Annotated[float, _seconds_at_least(1)] = Field(
        2 * 86_400.0, description="seconds, at least 1"
    )
    greylist_max_age: Annotated[float, _seconds_at_least(1)] = Field(
        35 * 86_400.0, description="seconds, at least 1"
    )

    @field_validator("dnsbl_threshold")
    @classmethod
    def _threshold(cls, value: int) -> int:
        return at_least(1, value)

    @field_validator("connection_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        return at_least(0, value, " (0 = no limit)")

    @property
    def active(self) -> bool:
        """Anything to do at all (else the screen costs nothing)."""
        return bool(self.dnsbl_sites or self.pregreet_wait or self.connection_rate or self.greylist)

    def summary(self) -> str:
        """One line for `hato check-config`: what the screen does on mx listeners."""
        parts = []
        if self.dnsbl_sites:
            sites = ", ".join(f"{site.zone}*{site.weight}" for site in self.dnsbl_sites)
            parts.append(f"dnsbl {sites} (refused at {self.dnsbl_threshold})")
        if self.pregreet_wait:
            parts.append(f"early talkers ({self.pregreet_wait:g} s)")
        if self.connection_rate:
            parts.append(f"{self.connection_rate} connections/min")
        if self.greylist:
            parts.append(f"greylisting ({self.greylist_delay:g} s)")
        return "mx: " + "; ".join(parts) if parts else "off"
