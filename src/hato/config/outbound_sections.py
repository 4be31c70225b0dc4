"""[delivery], [[transport]] and [smarthost] of hato.toml: how mail leaves for other hosts.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path. boot/outbound.py turns these into
hato.delivery.transport values.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
import ipaddress
import ssl
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hato.config.values import (
    at_least,
    check_readable_file,
    parse_domain_name,
    parse_nameserver,
    parse_seconds,
    resolve_path,
    show,
)

_SECTION = ConfigDict(frozen=True, extra="forbid")
Seconds = Annotated[float, PlainValidator(parse_seconds)]
_HOSTPORT = '"HOST:PORT" or "[HOST]:PORT", e.g. "[10.0.0.5]:2525"'


def _readable_file(value: object, info: ValidationInfo) -> Path:
    base = getattr(info.context, "base_dir", None)
    if not isinstance(base, Path):
        raise TypeError("validate hato config sections with context=ParseContext(base_dir)")
    access = getattr(info.context, "check_access", True)
    return check_readable_file(resolve_path(value, base), access)


def _ca_bundle(value: object, info: ValidationInfo) -> Path:
    """A readable PEM file holding at least one CA certificate (what OpenSSL can load)."""
    path = _readable_file(value, info)
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a PEM file of CA certificates ({exc}); "
            "give the CA's certificate (-----BEGIN CERTIFICATE-----), not a key"
        ) from None
    return path


CaBundle = Annotated[Path, PlainValidator(_ca_bundle)]


def _host(value: object) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            pass
    return parse_domain_name(value)


def parse_host_port(value: object) -> str:
    """``host:port``, ``[host]:port``, ``[2001:db8::1]:port`` -> ``[host]:port`` (normalized)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{show(value)} is not {_HOSTPORT}")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{show(value)} is not {_HOSTPORT}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        raise ValueError(f"{show(value)} needs a port: {_HOSTPORT}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{show(value)}: the port must be 1..65535")
    return f"[{_host(host)}]:{int(port_text)}"


def _host_port(value: object) -> str:
    return parse_host_port(value)


class TlsPolicyName(enum.StrEnum):
    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"
    DANE = "dane"


class SmarthostTls(enum.StrEnum):
    STARTTLS = "starttls"  # RFC 3207 on port 587 (required, never plaintext)
    IMPLICIT = "implicit"  # RFC 8314 on port 465


class DeliverySettings(BaseModel):
    """[delivery]: outbound SMTP."""

    model_config = _SECTION

    mx_port: StrictInt = Field(
        25, description="the port of MX hosts, 1..65535 (25; another value only for tests)"
    )
    allow_loopback: StrictBool = Field(
        False, description="true or false: deliver to loopback addresses (tests only)"
    )
    source_address: Annotated[str, PlainValidator(_host)] | None = Field(
        None, description='the local IP address to connect from, e.g. "192.0.2.10"'
    )
    connect_timeout: Seconds = Field(30.0, description="seconds, more than 0")
    attempt_timeout: Seconds = Field(
        600.0, description="seconds one delivery attempt of one destination may take"
    )
    idle_timeout: Seconds = Field(
        5.0, description="seconds an idle connection is kept for reuse (0 = no reuse)"
    )
    max_messages_per_connection: StrictInt = Field(100, description="an integer, at least 1")
    max_connections_per_domain: StrictInt = Field(10, description="an integer, at least 1")
    max_connections: StrictInt = Field(100, description="an integer, at least 1")
    ca_file: CaBundle | None = Field(
        None,
        description="a PEM file of CA certificates trusted for next hops, added to the "
        "system's trust (e.g. a private CA of relays or MX hosts verified by policy)",
    )
    mta_sts: StrictBool = Field(True, description="true or false: honour MTA-STS (RFC 8461)")
    mta_sts_connect_to: Annotated[str, PlainValidator(_host_port)] | None = Field(
        None, description=f"tests only: fetch every MTA-STS policy from {_HOSTPORT}"
    )
    mta_sts_ca_file: Annotated[Path, PlainValidator(_readable_file)] | None = Field(
        None, description="a PEM file of CA certificates for MTA-STS fetches (tests)"
    )
    dane: StrictBool = Field(
        False, description="true or false: DANE (RFC 7672); needs a validating resolver"
    )
    dane_nameservers: tuple[Annotated[str, PlainValidator(parse_nameserver)], ...] | None = Field(
        None, description='the validating resolver, e.g. ["127.0.0.1"] (default: [dns])'
    )

    @field_validator("mx_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"must be 1..65535, got {value}")
        return value

    @field_validator("connect_timeout", "attempt_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be more than 0 seconds, got {value:g}")
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be at least 0 seconds, got {value:g}")
        return value

    @field_validator("max_messages_per_connection", "max_connections_per_domain", "max_connections")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        return at_least(1, value)


class TransportSettings(BaseModel):
    """One [[transport]]: how mail for one domain leaves, and/or its TLS policy."""

    model_config = _SECTION

    domain: Annotated[str, PlainValidator(parse_domain_name)] = Field(
        description='a domain name, e.g. "example.com"'
    )
    relay: Annotated[str, PlainValidator(_host_port)] | None = Field(
        None, description=f"an SMTP host, {_HOSTPORT}"
    )
    lmtp: Annotated[str, PlainValidator(_host_port)] | None = Field(
        None, description=f'an LMTP host (e.g. Dovecot), {_HOSTPORT}, e.g. "127.0.0.1:24"'
    )
    smarthost: StrictBool = Field(False, description="true: send through [smarthost]")
    mx: StrictBool = Field(False, description="true: MX routing even when [smarthost] is set")
    tls: TlsPolicyName | None = Field(
        None, description='one of "none", "may", "encrypt", "verify", "dane"'
    )

    @model_validator(mode="after")
    def _one_route(self) -> TransportSettings:
        routes = [k for k in ("relay", "lmtp") if getattr(self, k) is not None]
        routes += [k for k in ("smarthost", "mx") if getattr(self, k)]
        if len(routes) > 1:
            raise ValueError(f"choose one of relay, lmtp, smarthost, mx (got {', '.join(routes)})")
        if not routes and self.tls is None:
            raise ValueError("say where mail goes (relay, lmtp, smarthost, mx) or set tls")
        return self


class SmarthostSettings(BaseModel):
    """[smarthost]: send all outbound mail through this host (e.g. the provider's 587)."""

    model_config = _SECTION

    host: Annotated[str, PlainValidator(_host)] = Field(
        description='a host name or IP address, e.g. "smtp.provider.net"'
    )
    port: StrictInt = Field(587, description="a port, 1..65535 (587 starttls, 465 implicit)")
    tls: SmarthostTls = Field(SmarthostTls.STARTTLS, description='"starttls" or "implicit"')
    verify_certificate: StrictBool = Field(True, description="true or false")
    ca_file: CaBundle | None = Field(
        None,
        description="a PEM file of CA certificates: the smarthost's certificate is verified "
        "against these only, instead of the system's trust (a private CA)",
    )
    username: StrictStr | None = Field(None, description="the AUTH user name")
    password: StrictStr | None = Field(None, description="the AUTH password", repr=False)
    password_file: Annotated[Path, PlainValidator(_readable_file)] | None = Field(
        None, description="a readable file holding the AUTH password"
    )
    fallback: StrictBool = Field(
        False,
        description="true: deliver by MX as usual, and through this host only while outbound "
        "port 25 appears blocked (false: all outbound mail goes through it)",
    )

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"must be 1..65535, got {value}")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> SmarthostSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        has_secret = self.password is not None or self.password_file is not None
        if has_secret != (self.username is not None):
            raise ValueError("username and a password (or password_file) go together")
        return self

    def secret(self) -> str | None:
        """The password (read from password_file when that is set; one trailing newline off)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").removesuffix("\n")
        return self.password
