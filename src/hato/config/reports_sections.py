"""[reports] of hato.toml: the DMARC aggregate reports (RFC 7489 §7.2) and SMTP TLS reports
(RFC 8460) this server sends (docs/reports.md).

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

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

from hato.config.values import parse_seconds, parse_target, show
from hato.model import Address

_SECTION = ConfigDict(frozen=True, extra="forbid")
HOUR = 3600


def _address(value: object) -> Address:
    if isinstance(value, str) and "@" in value:
        return parse_target(value, "localhost")
    raise ValueError(
        f'{show(value)} is not an address: write local@domain, e.g. "dmarc@example.org"'
    )


class ReportsSettings(BaseModel):
    """[reports]: record what we see, and report it to the domains that ask."""

    model_config = _SECTION

    enabled: StrictBool = Field(
        False,
        description="record inbound DMARC results (and, with tlsrpt, outbound TLS results) and "
        "send the daily reports; off by default: a report tells other domains who mailed us",
    )
    tlsrpt: StrictBool = Field(
        True, description="with enabled: also record outbound TLS and send TLS reports"
    )
    org_name: str | None = Field(
        None, description="the organisation named in the reports (default: [server] hostname)"
    )
    from_address: Annotated[Address, PlainValidator(_address)] | None = Field(
        None,
        description='the From: and contact of the reports, e.g. "noreply-dmarc@example.org" '
        "(default: noreply-dmarc@ the first [[domain]], so that they are DKIM-signed)",
    )
    interval: Annotated[float, PlainValidator(parse_seconds)] = Field(
        86400.0,
        description="seconds each report covers, whole hours, 3600..86400 (RFC 7489 §7.2: "
        "daily by default)",
    )
    hour: StrictInt = Field(
        0,
        description="the UTC hour (0..23) daily reports go out at; with a shorter interval, "
        "the intervals are counted from it",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value % HOUR or not HOUR <= value <= 86400:
            raise ValueError(f"must be whole hours from 3600 to 86400 seconds, got {value:g}")
        return value

    @field_validator("hour")
    @classmethod
    def _hour(cls, value: int) -> int:
        if not 0 <= value <= 23:
            raise ValueError(f"must be an hour 0..23 (UTC), got {value}")
        return value

    @field_validator("org_name")
    @classmethod
    def _org(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError('must not be empty, e.g. "Example Org"')
        return value

    def sender(self, first_domain: str) -> Address:
        return self.from_address or Address("noreply-dmarc", first_domain)
