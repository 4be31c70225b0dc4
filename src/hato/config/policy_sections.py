"""The policy sections of hato.toml: [auth], [[network]] and [dns].

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hato.config.values import (
    IPNetwork,
    at_least,
    parse_cidr,
    parse_domain_name,
    parse_nameserver,
    parse_seconds,
    show,
)

_SECTION = ConfigDict(frozen=True, extra="forbid")
# RFC 4954 §4 names SASL mechanisms (RFC 4422 §3.1); these are the ones Hato implements:
# PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), SCRAM-SHA-256 (RFC 7677).
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
SCRAM_MIN_ITERATIONS = 4096  # RFC 7677 §4
# PBKDF2-SHA256 rounds for SCRAM keys: 16x RFC 7677's minimum (docs/submission.md measures it),
# and the most that Cyrus SASL's SCRAM client computes (MAX_ITERATION_COUNTER 0x10000): Postfix,
# and every other client on libsasl2, refuses a larger count and fails the login.
SCRAM_DEFAULT_ITERATIONS = 65_536
_NETWORK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

Seconds = Annotated[float, PlainValidator(parse_seconds)]


def _mechanism(value: object) -> str:
    if isinstance(value, str) and value.upper() in AUTH_MECHANISMS:
        return value.upper()
    raise ValueError(
        f"{show(value)} is not a mechanism Hato offers (one of {', '.join(AUTH_MECHANISMS)})"
    )


def _network_name(value: object) -> str:
    if isinstance(value, str) and _NETWORK_NAME.fullmatch(value):
        return value
    raise ValueError(
        f'{show(value)} is not a network name (lower-case letters, digits, "-", "_"; '
        'example: "dynamic")'
    )


NetworkName = Annotated[str, PlainValidator(_network_name)]


class AuthSettings(BaseModel):
    """[auth]: SMTP AUTH on submission/submissions listeners, and failure throttling."""

    model_config = _SECTION

    mechanisms: tuple[Annotated[str, PlainValidator(_mechanism)], ...] = Field(
        AUTH_MECHANISMS, description='an array of "PLAIN", "LOGIN", "SCRAM-SHA-256"'
    )
    failure_delay: Seconds = Field(1.0, description="seconds, at least 0, e.g. 1.0")
    max_failure_delay: Seconds = Field(16.0, description="seconds, at least failure_delay")
    max_failures: StrictInt = Field(10, description="an integer, at least 1")
    max_account_failures: StrictInt = Field(30, description="an integer, at least 1")
    failure_window: Seconds = Field(600.0, description="seconds, more than 0")
    block_time: Seconds = Field(900.0, description="seconds, at least 0")
    scram_iterations: StrictInt = Field(
        SCRAM_DEFAULT_ITERATIONS, description=f"an integer, at least {SCRAM_MIN_ITERATIONS}"
    )
    cache_ttl: Seconds = Field(300.0, description="seconds, at least 0 (0: no cache), e.g. 300")
    cache_size: StrictInt = Field(10000, description="an integer, at least 1")

    @field_validator("mechanisms")
    @classmethod
    def _mechanisms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"offer at least one mechanism (of {', '.join(AUTH_MECHANISMS)})")
        if len(set(value)) != len(value):
            raise ValueError("a mechanism is listed twice")
        return value

    @field_validator("failure_delay", "block_time", "cache_ttl")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be at least 0, got {value:g}")
        return value

    @field_validator("failure_window")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be more than 0 seconds, got {value:g}")
        return value

    @field_validator("max_failure_delay")
    @classmethod
    def _cap(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("failure_delay", 0.0)
        if value < first:
            raise ValueError(f"must be at least auth.failure_delay ({first:g}), got {value:g}")
        return value

    @field_validator("max_failures", "max_account_failures", "cache_size")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        return at_least(1, value)

    @field_validator("scram_iterations")
    @classmethod
    def _iterations(cls, value: int) -> int:
        # RFC 7677 §4: at least 4096 iterations for SCRAM-SHA-256.
        return at_least(SCRAM_MIN_ITERATIONS, value)

    @property
    def stored_scram_iterations(self) -> int:
        """The count new SCRAM keys get; 0 when SCRAM is not offered, so none are stored."""
        return self.scram_iterations if "SCRAM-SHA-256" in self.mechanisms else 0


class NetworkSettings(BaseModel):
    """One [[network]]: a named set of client addresses, for listener rules."""

    model_config = _SECTION

    name: NetworkName = Field(description='a lower-case name, e.g. "dynamic" or "office"')
    cidrs: tuple[Annotated[IPNetwork, PlainValidator(parse_cidr)], ...] = Field(
        (), description='an array of CIDRs, e.g. ["198.51.100.0/24", "2001:db8:1::/48"]'
    )
    dnsbl: Annotated[str, PlainValidator(parse_domain_name)] | None = Field(
        None, description='a DNSBL zone (a domain name), e.g. "pbl.example.net"'
    )

    @model_validator(mode="after")
    def _something(self) -> NetworkSettings:
        if self.dnsbl is None and not self.cidrs:
            raise ValueError("a network needs cidrs, a dnsbl zone, or both")
        return self


class DnsSettings(BaseModel):
    """[dns]: the resolver Hato asks (DNSBLs; later MX, SPF, DKIM, DANE)."""

    model_config = _SECTION

    nameservers: tuple[Annotated[str, PlainValidator(parse_nameserver)], ...] | None = Field(
        None, description='an array of IP[:PORT], e.g. ["127.0.0.1", "[::1]:5353"]'
    )
    timeout: Seconds = Field(5.0, description="seconds, more than 0 and at most 60")

    @field_validator("nameservers")
    @classmethod
    def _some(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError(
                "an empty list would ask nobody; leave the key out to use the system's"
            )
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= 60:
            raise ValueError(f"must be more than 0 and at most 60 seconds, got {value:g}")
        return value
