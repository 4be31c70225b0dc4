"""Operations settings of hato.toml: [metrics], and the [server] user and group to run as.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path. A user or group must exist on the machine that reads
the file (the server drops to them after binding its ports).

Must not import anything of hato but model.
"""

from __future__ import annotations

import grp
import pwd
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    field_validator,
)

from hato.config.values import ListenAddress, at_least, parse_listen_address, show

_SECTION = ConfigDict(frozen=True, extra="forbid")
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"  # the port Prometheus' exporter list gives us


def parse_user(value: object) -> str:
    """The name of a user that exists on this system."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'{show(value)} is not a user name (e.g. "hato")')
    try:
        pwd.getpwnam(value)
    except KeyError:
        raise ValueError(
            f"no user {show(value)} on this system; create it (useradd --system --home-dir "
            f"/var/lib/hato --shell /usr/sbin/nologin {value}) or name an existing one"
        ) from None
    return value


def parse_group(value: object) -> str:
    """The name of a group that exists on this system."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'{show(value)} is not a group name (e.g. "hato")')
    try:
        grp.getgrnam(value)
    except KeyError:
        raise ValueError(
            f"no group {show(value)} on this system; create it (groupadd --system {value}) "
            "or leave group out to use the user's own group"
        ) from None
    return value


SystemUser = Annotated[str, PlainValidator(parse_user)]
SystemGroup = Annotated[str, PlainValidator(parse_group)]
USER_DESCRIPTION = 'the name of an existing user to run as after binding, e.g. "hato"'
GROUP_DESCRIPTION = 'the name of an existing group (default: the user\'s own), e.g. "hato"'


def check_group_has_user(group: str | None, *, user_missing: bool) -> str | None:
    """[server] group alone says nothing about whom to run as."""
    if group is not None and user_missing:
        raise ValueError('needs user too (e.g. user = "hato"): whom to run as')
    return group


class HttpLimitSettings(BaseModel):
    """What [metrics] and [wkd] share: the limits of an HTTP endpoint (server/httpguard.py)."""

    model_config = _SECTION

    max_connections: StrictInt = Field(100, description="an integer, at least 1")
    max_connections_per_ip: StrictInt = Field(10, description="an integer, at least 1")
    header_timeout: StrictInt = Field(10, description="seconds as an integer, 1..300")

    @field_validator("max_connections", "max_connections_per_ip")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        return at_least(1, value)

    @field_validator("header_timeout")
    @classmethod
    def _header_timeout(cls, value: int) -> int:
        if not 1 <= value <= 300:
            raise ValueError(f"must be 1 to 300 seconds, got {value}")
        return value


class MetricsSettings(HttpLimitSettings):
    """[metrics]: the Prometheus endpoint (GET /metrics). No address: no endpoint."""

    address: Annotated[ListenAddress, PlainValidator(parse_listen_address)] | None = Field(
        None,
        description=f'HOST:PORT for GET /metrics, e.g. "{DEFAULT_METRICS_ADDRESS}"; '
        "leave out to turn the endpoint off",
    )


def metrics_clashes(listeners: object, metrics: object) -> list[str]:
    """The metrics endpoint may not take a [[listener]]'s address."""
    if not isinstance(metrics, dict) or not isinstance(listeners, list):
        return []
    try:
        ours = parse_listen_address(metrics.get("address"))
    except ValueError:
        return []  # absent, or reported by the section's own validation
    problems = []
    for index, item in enumerate(listeners):
        if isinstance(item, dict) and _address(item) == ours:
            problems.append(
                f"metrics.address: {show(metrics['address'])} is already used by "
                f"listener[{index}]; give the metrics endpoint its own port (e.g. 9464)"
            )
    return problems


def _address(item: dict[str, Any]) -> ListenAddress | None:
    try:
        return parse_listen_address(item.get("address"))
    except ValueError:
        return None


class WkdSettings(HttpLimitSettings):
    """[wkd]: serve users' OpenPGP keys by Web Key Directory (draft-koch-openpgp-webkey-service)
    so senders' mail clients find them. No address: not served (`hato key wkd-export DIR`
    writes static files for a web server instead)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: Annotated[ListenAddress, PlainValidator(parse_listen_address)] | None = Field(
        None,
        description='HOST:PORT for the WKD HTTP(S) endpoint, e.g. "127.0.0.1:8443" (behind a '
        "reverse proxy for openpgpkey.DOMAIN) or absent",
    )
    https: bool = Field(
        False, description="true: serve HTTPS with the [tls] certificate (false: plain HTTP)"
    )
    mta_sts: StrictBool = Field(
        True,
        description="true: also serve /.well-known/mta-sts.txt to Host mta-sts.DOMAIN "
        "(RFC 8461 §3.2); false: not",
    )
    autoconfig: StrictBool = Field(
        True,
        description="true: also answer mail clients' autoconfig (Host autoconfig.DOMAIN) and "
        "Autodiscover requests; false: not",
    )
    imap_port: StrictInt | None = Field(
        None,
        description="the IMAPS port (implicit TLS, e.g. 993) Dovecot serves on [server] hostname, "
        "advertised to mail clients and by hato dns; absent: no IMAP advertised",
    )

    @field_validator("imap_port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"must be a port number 1 to 65535, got {value}")
        return value
