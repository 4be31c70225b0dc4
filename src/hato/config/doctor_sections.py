"""[doctor] of hato.toml: what `hato doctor` (and its periodic run inside `hato serve`) probes.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, field_validator

from hato.config.values import parse_domain_name, parse_seconds, show

_SECTION = ConfigDict(frozen=True, extra="forbid")

# Well-known MX hosts of large mailbox providers, only ever probed by an admin's `hato doctor`
# (a TCP connect that is closed at once). Tests and CI set egress_targets to loopback.
DEFAULT_EGRESS_TARGETS = (
    "gmail-smtp-in.l.google.com:25",
    "mx1.mail.icloud.com:25",
    "mta5.am0.yahoodns.net:25",
)
DEFAULT_DNSBLS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")


def parse_target(value: object) -> str:
    """``host``, ``host:port``, ``[2001:db8::1]:port`` -> ``host:port`` / ``[v6]:port``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{show(value)} is not HOST or HOST:PORT, e.g. "mx.example.net:25"')
    text = value.strip()
    host, port_text = text, "25"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or "25"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{show(value)}: the port must be 1..65535")
    try:
        address = ipaddress.ip_address(host)
        host = f"[{address}]" if address.version == 6 else str(address)
    except ValueError:
        host = parse_domain_name(host)
    return f"{host}:{int(port_text)}"


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f'{show(value)} is not an IP address, e.g. "192.0.2.10"') from None


class DoctorSettings(BaseModel):
    """[doctor]: the deliverability checks of `hato doctor`."""

    model_config = _SECTION

    egress_targets: tuple[Annotated[str, PlainValidator(parse_target)], ...] = Field(
        DEFAULT_EGRESS_TARGETS,
        description='MX hosts whose port 25 the egress check connects to (and closes), "HOST" '
        'or "HOST:PORT"; [] turns the check off',
    )
    egress_timeout: Annotated[float, PlainValidator(parse_seconds)] = Field(
        5.0, description="seconds one port 25 connection attempt may take, more than 0"
    )
    dnsbls: tuple[Annotated[str, PlainValidator(parse_domain_name)], ...] = Field(
        DEFAULT_DNSBLS,
        description='DNS block list zones to look our addresses up in, e.g. ["zen.spamhaus.org"]',
    )
    addresses: tuple[Annotated[str, PlainValidator(_address)], ...] = Field(
        (),
        description="our outbound IP addresses (default: [delivery] source_address, else the "
        "A/AAAA records of [server] hostname)",
    )
    interval: Annotated[float, PlainValidator(parse_seconds)] = Field(
        0.0,
        description="seconds between runs of the checks inside hato serve (0: never), e.g. "
        "86400; a change in the problems is logged, counted and mailed to the postmaster",
    )
    caa_issuer: Annotated[str, PlainValidator(parse_domain_name)] | None = Field(
        None,
        description="the CAA issuer domain of the CA that issues our certificate, e.g. "
        '"letsencrypt.org" (default: known from [tls] acme directory, else not checked)',
    )
    cert_warn_days: StrictInt = Field(
        21, description="days: a certificate valid for fewer days is reported, 1..365"
    )

    @field_validator("egress_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be more than 0 seconds, got {value:g}")
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value != 0 and value < 1:
            raise ValueError(f"must be 0 (never) or at least 1 second, got {value:g}")
        return value

    @field_validator("cert_warn_days")
    @classmethod
    def _days(cls, value: int) -> int:
        if not 1 <= value <= 365:
            raise ValueError(f"must be 1..365 days, got {value}")
        return value
