"""The outbound courier's settings as values: transports, the smarthost, limits, TLS table.

`boot/outbound.py` builds an `OutboundSettings` from the config's [delivery], [[transport]] and
[smarthost] sections (delivery never imports config).

Must not import anything of hato but model (and delivery's own values).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from hato.delivery.mx import SMTP_PORT, RelayTarget
from hato.delivery.tlspolicy import TlsLevel
from hato.model import Address
from hato.model.dns import normalize_name

SUBMISSION_PORT = 587  # RFC 6409 §3.1
SUBMISSIONS_PORT = 465  # RFC 8314 §7.3


class TransportKind(enum.Enum):
    MX = "mx"  # RFC 5321 §5.1 routing by MX records
    RELAY = "relay"  # a fixed host:port speaking SMTP, no MX lookup
    LMTP = "lmtp"  # a fixed host:port speaking LMTP (RFC 2033), e.g. Dovecot
    SMARTHOST = "smarthost"  # the global [smarthost]


@dataclass(frozen=True, slots=True)
class Transport:
    kind: TransportKind | None = None  # None: the default route (smarthost, else MX)
    target: RelayTarget | None = None  # for RELAY and LMTP
    tls: TlsLevel | None = None  # the domain's TLS level; None: the default rules

    def __post_init__(self) -> None:
        if (self.kind in (TransportKind.RELAY, TransportKind.LMTP)) != (self.target is not None):
            raise ValueError("relay and lmtp transports need a target, the others none")


@dataclass(frozen=True, slots=True)
class Smarthost:
    """A relay host for all outbound mail (how a server behind OP25B sends at all).

    `implicit_tls`: TLS from the first byte (RFC 8314, port 465); else STARTTLS (port 587), which
    is then required. AUTH (RFC 4954) is only ever sent over TLS."""

    host: str
    port: int = SUBMISSION_PORT
    implicit_tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_certificate: bool = True
    fallback: bool = False  # only while outbound port 25 appears blocked (delivery/egress.py)

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def target(self) -> RelayTarget:
        return RelayTarget(self.host, self.port)


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    """How the courier connects. `mx_port` is 25 except in tests (RFC 5321 §4.5.4.1 uses 25)."""

    helo_name: str
    transports: Mapping[str, Transport] = field(default_factory=dict)
    smarthost: Smarthost | None = None
    mx_port: int = SMTP_PORT
    allow_loopback: bool = False
    own_addresses: frozenset[str] = frozenset()
    source_address: str | None = None
    connect_timeout: float = 30.0
    attempt_timeout: float = 600.0
    idle_timeout: float = 5.0
    max_messages_per_connection: int = 100
    max_connections_per_domain: int = 10
    max_connections: int = 100

    def __post_init__(self) -> None:
        # Keys in A-label form, lower case: what transport_for looks up (IDNA, RFC 5890).
        keys = {_key(domain): t for domain, t in self.transports.items()}
        object.__setattr__(self, "transports", keys)

    def transport_for(self, domain: str) -> Transport:
        """The [[transport]] of `domain` (exact name), else the smarthost if there is one, else
        MX routing (Postfix's transport_maps, then relayhost). The result's kind is never None."""
        found = self.transports.get(_key(domain), Transport())
        if found.kind is not None:
            return found
        always = self.smarthost is not None and not self.smarthost.fallback
        default = TransportKind.SMARTHOST if always else TransportKind.MX
        return Transport(default, None, found.tls)


def _key(domain: str) -> str:
    return normalize_name(Address("postmaster", domain.lower()).domain_ascii)
