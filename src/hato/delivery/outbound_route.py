"""Route planning for the outbound courier: where a recipient goes and how to reach it.

`RoutePlanner` answers, for one destination group (outbound.py's steps 1-3), without any
connection of its own: the destination of a recipient (MX, transport table, smarthost), its
hops (MX hosts in order, the address literal, or the configured host), the TLS policy inputs and
each hop's TLS decision (tlspolicy.decide: table level, MTA-STS, DANE, REQUIRETLS), the
addresses to try (loops refused), and the connection options for one address. The attempt
(outbound_attempt.py) walks what it answers; the courier (outbound.py) owns the connections.

Must not import anything of hato but model, smtp and delivery.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from hato.delivery.dane import DaneLookup, lookup_tlsa
from hato.delivery.mtasts import MtaSts
from hato.delivery.mx import (
    DNS_TEMPFAIL,
    MAIL_LOOP,
    NO_ADDRESS,
    RouteError,
    host_addresses,
    ip_literal,
    is_loopback,
    route_domain,
)
from hato.delivery.smtp_client import Capabilities, ConnectOptions, TlsMode
from hato.delivery.tlspolicy import HopTls, PolicyInputs, PolicyRefusal, TlsLevel, decide
from hato.delivery.transport import OutboundSettings, Smarthost, TransportKind
from hato.model import QueuedRecipient, Reply, logfmt
from hato.model.dns import Resolver

# The courier's logger: route, loop and resolution events keep the name operators grep.
log = logging.getLogger("hato.delivery.outbound")

NO_MAIL_SERVER = Reply(550, "5.1.2", "Recipient domain has no mail server address")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a group of recipients goes; `name` is the concurrency key and log name."""

    kind: TransportKind
    name: str
    domain: str  # the recipient domain (A-label) whose policy applies
    tls: TlsLevel | None = None
    host: str = ""  # RELAY/LMTP: the host; MX with an address literal: the address
    port: int = 0


@dataclass(frozen=True, slots=True)
class Hop:
    host: str
    port: int
    trusted: bool  # DNSSEC-validated MX, an address literal, or a host the admin configured
    dane_eligible: bool = False  # RFC 7672 §2.2.1: only hosts from a secure MX RRset
    lmtp: bool = False
    smarthost: Smarthost | None = None
    implicit: bool = False  # RFC 5321 §5.1 implicit MX: the domain itself
    # A host the admin named (relay, LMTP, smarthost): loopback is a legitimate target there
    # (Dovecot's LMTP on 127.0.0.1, a local filter), unlike an MX that resolves to us.
    configured: bool = False


class RoutePlanner:
    """The route and TLS decisions of the outbound courier (see the module docstring)."""

    def __init__(
        self,
        settings: OutboundSettings,
        resolver: Resolver,
        *,
        rng: random.Random | None = None,
        mta_sts: MtaSts | None = None,
        dane_resolver: Resolver | None = None,
        verify_context: ssl.SSLContext | None = None,
        smarthost_context: ssl.SSLContext | None = None,
        own_names: Collection[str] = (),
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._mta_sts = mta_sts
        self._dane_resolver = dane_resolver
        self._verify_context = verify_context or ssl.create_default_context()
        # [smarthost] ca_file: the smarthost is verified against its own CA file alone.
        self._smarthost_context = smarthost_context or self._verify_context
        self._own_names = frozenset(n.rstrip(".").lower() for n in (settings.helo_name, *own_names))

    def reconfigure(
        self,
        settings: OutboundSettings,
        verify_context: ssl.SSLContext,
        smarthost_context: ssl.SSLContext | None,
    ) -> None:
        """A reload: the next routes use these settings and this trust."""
        self._settings = settings
        self._verify_context = verify_context
        self._smarthost_context = smarthost_context or verify_context

    def destination(self, rcpt: QueuedRecipient, *, fallback: Callable[[], bool]) -> Destination:
        """Where `rcpt` goes; `fallback()`: port 25 is blocked and the smarthost takes MX mail
        (asked only for MX mail: asking may use up the egress monitor's next probe)."""
        address = rcpt.address
        if address.is_literal:
            # RFC 5321 §5.1 / §4.1.3: an address literal is delivered to that address.
            literal = ip_literal(address.domain) or address.domain
            return Destination(TransportKind.MX, address.domain, address.domain, host=literal)
        domain = address.domain_ascii
        transport = self._settings.transport_for(domain)
        kind = transport.kind or TransportKind.MX
        target = transport.target
        if kind is TransportKind.SMARTHOST or (kind is TransportKind.MX and fallback()):
            return Destination(TransportKind.SMARTHOST, "smarthost", "", transport.tls)
        if target is not None:
            return Destination(kind, str(target), "", transport.tls, target.host, target.port)
        return Destination(kind, domain, domain, transport.tls)

    async def hops(self, dest: Destination) -> list[Hop] | RouteError:
        mx_port = self._settings.mx_port
        match dest.kind:
            case TransportKind.SMARTHOST:
                smarthost = self._settings.smarthost
                assert smarthost is not None  # transport_for only answers it when configured
                return [
                    Hop(smarthost.host, smarthost.port, True, smarthost=smarthost, configured=True)
                ]
            case TransportKind.RELAY | TransportKind.LMTP:
                lmtp = dest.kind is TransportKind.LMTP
                return [Hop(dest.host, dest.port, True, lmtp=lmtp, configured=True)]
            case TransportKind.MX if dest.host:
                return [Hop(dest.host, mx_port, True)]
            case TransportKind.MX:
                route = await route_domain(self._resolver, dest.domain, self._rng, self._own_names)
                if isinstance(route, RouteError):
                    log.info(logfmt("route-failed", domain=dest.domain, detail=route.detail))
                    return route
                return [
                    Hop(h.name, mx_port, h.secure, h.secure, implicit=h.implicit)
                    for h in route.hosts
                ]

    async def policy_inputs(
        self, dest: Destination, requiretls: bool, tls_optional: bool = False
    ) -> PolicyInputs:
        sts = None
        wants_sts = requiretls or not tls_optional  # RFC 8689 §4.2.2: "No" ignores MTA-STS
        if dest.kind is TransportKind.MX and not dest.host and self._mta_sts and wants_sts:
            sts = await self._mta_sts.policy_for(dest.domain)
        return PolicyInputs(dest.domain or dest.name, dest.tls, sts, requiretls, tls_optional)

    def sts_problem(self, domain: str) -> tuple[str, str] | None:
        """Why `domain`'s MTA-STS policy could not be refreshed last time (result-type, detail)."""
        return self._mta_sts.problems.get(domain) if self._mta_sts is not None else None

    async def hop_tls(self, inputs: PolicyInputs, hop: Hop) -> HopTls | PolicyRefusal:
        if hop.smarthost is not None:
            if inputs.requiretls or hop.smarthost.verify_certificate:
                # RFC 8689 §4.2.1: REQUIRETLS needs a verified certificate, a smarthost's too.
                return HopTls(TlsLevel.VERIFY, "the smarthost settings")
            return HopTls(TlsLevel.ENCRYPT, "the smarthost settings")
        dane: DaneLookup | None = None
        wants_dane = hop.dane_eligible or inputs.configured is TlsLevel.DANE
        if inputs.tls_optional and not inputs.requiretls:
            wants_dane = False  # RFC 8689 §4.2.2: "TLS-Required: No" ignores DANE
        if self._dane_resolver is not None and wants_dane and ip_literal(hop.host) is None:
            dane = await lookup_tlsa(self._dane_resolver, hop.host, hop.port)
        return decide(inputs, hop.host, dane, hop.trusted)

    async def addresses(self, hop: Hop) -> list[str] | Reply:
        found = await host_addresses(self._resolver, hop.host)
        if not found.addresses:
            log.info(logfmt("host-unresolved", host=hop.host, detail=found.detail or "no A/AAAA"))
            if found.tempfail:
                return DNS_TEMPFAIL
            # RFC 5321 §5.1: a domain without MX and without address records gets no mail.
            return NO_MAIL_SERVER if hop.implicit else NO_ADDRESS
        usable = [a for a in found.addresses if hop.configured or not self._is_self(a)]
        if not usable:
            # RFC 5321 §5.1 / Postfix: delivering to ourselves would loop.
            log.warning(logfmt("mx-loop", host=hop.host, addresses=",".join(found.addresses)))
            return MAIL_LOOP
        return usable

    def _is_self(self, address: str) -> bool:
        own = address in self._settings.own_addresses
        return own or (is_loopback(address) and not self._settings.allow_loopback)

    def is_us(self, capabilities: Capabilities) -> bool:
        """The peer's EHLO names our own host (RFC 5321 §4.1.1.1 greeting domain)."""
        name = capabilities.server_name.rstrip(".").lower()
        return bool(name) and name in self._own_names

    def options(self, hop: Hop, address: str, tls: HopTls, plaintext: bool) -> ConnectOptions:
        s = self._settings
        server_name = "" if ip_literal(hop.host) else hop.host
        base = ConnectOptions(
            host=address,
            port=hop.port,
            helo_name=s.helo_name,
            server_name=server_name,
            lmtp=hop.lmtp,
            connect_timeout=s.connect_timeout,
            source_address=s.source_address,
        )
        if plaintext or tls.level is TlsLevel.NONE:
            return replace(base, tls_mode=TlsMode.NONE)
        if hop.smarthost is not None:
            mode = TlsMode.IMPLICIT if hop.smarthost.implicit_tls else TlsMode.REQUIRED
            context = self._smarthost_context if tls.level is TlsLevel.VERIFY else None
            # RFC 4954 §4 / RFC 8314: credentials only ever go over TLS (the driver checks it).
            return replace(base, tls_mode=mode, ssl_context=context, auth=hop.smarthost.auth)
        match tls.level:
            case TlsLevel.MAY:
                return replace(base, tls_mode=TlsMode.OPPORTUNISTIC)
            case TlsLevel.ENCRYPT:
                return replace(base, tls_mode=TlsMode.REQUIRED)
            case TlsLevel.VERIFY:
                context = self._verify_context
                return replace(base, tls_mode=TlsMode.REQUIRED, ssl_context=context)
            case TlsLevel.DANE:
                verify = tls.dane.verifier() if tls.dane is not None else None
                return replace(base, tls_mode=TlsMode.REQUIRED, verify_peer=verify)
        raise AssertionError(tls.level)  # pragma: no cover - NONE handled above
