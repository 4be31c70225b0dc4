"""Building the outbound courier from the settings (part of the composition root, kept apart
from boot/app.py so that file stays readable).

May import every room (like boot/app.py).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from hato.delivery.mtasts import HttpsPolicyFetcher, MtaSts
from hato.delivery.mx import parse_relay
from hato.delivery.outbound import OutboundCourier
from hato.delivery.tlspolicy import TlsLevel
from hato.delivery.transport import OutboundSettings, Smarthost, Transport, TransportKind
from hato.dns import DnsPythonResolver
from hato.model import Clock
from hato.model.dns import Resolver

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.config.outbound_sections import TransportSettings


def _transport(t: TransportSettings) -> Transport:
    if t.relay:
        kind: TransportKind | None = TransportKind.RELAY
    elif t.lmtp:
        kind = TransportKind.LMTP
    elif t.smarthost:
        kind = TransportKind.SMARTHOST
    elif t.mx:
        kind = TransportKind.MX
    else:
        kind = None
    target = t.relay or t.lmtp
    return Transport(
        kind,
        parse_relay(target) if target else None,
        TlsLevel(t.tls.value) if t.tls else None,
    )


def outbound_settings(settings: Settings) -> OutboundSettings:
    d = settings.delivery
    sh = settings.smarthost
    smarthost = (
        Smarthost(
            sh.host,
            sh.port,
            implicit_tls=sh.tls.value == "implicit",
            username=sh.username,
            password=sh.secret(),
            verify_certificate=sh.verify_certificate,
            fallback=sh.fallback,
        )
        if sh is not None
        else None
    )
    return OutboundSettings(
        settings.server.hostname,
        {t.domain: _transport(t) for t in settings.transports},
        smarthost,
        mx_port=d.mx_port,
        allow_loopback=d.allow_loopback,
        source_address=d.source_address,
        connect_timeout=d.connect_timeout,
        attempt_timeout=d.attempt_timeout,
        idle_timeout=d.idle_timeout,
        max_messages_per_connection=d.max_messages_per_connection,
        max_connections_per_domain=d.max_connections_per_domain,
        max_connections=d.max_connections,
    )


def verify_contexts(settings: Settings) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
    """The contexts that verify next hops: the system's trust plus [delivery] ca_file, and
    for the smarthost its own [smarthost] ca_file alone (None: the first one)."""
    # RFC 7817 §3 / RFC 6125: the default context checks the chain and the host name.
    verify = ssl.create_default_context()
    if settings.delivery.ca_file is not None:
        verify.load_verify_locations(cafile=str(settings.delivery.ca_file))
    sh = settings.smarthost
    smarthost = None
    if sh is not None and sh.ca_file is not None:
        smarthost = ssl.create_default_context(cafile=str(sh.ca_file))
    return verify, smarthost


def build_outbound(settings: Settings, resolver: Resolver, clock: Clock) -> OutboundCourier:
    d = settings.delivery
    mta_sts = None
    if d.mta_sts:
        ca = ssl.create_default_context(
            cafile=str(d.mta_sts_ca_file) if d.mta_sts_ca_file else None
        )
        connect_to = None
        if d.mta_sts_connect_to:
            target = parse_relay(d.mta_sts_connect_to, default_port=443)
            connect_to = (target.host, target.port)
        mta_sts = MtaSts(resolver, HttpsPolicyFetcher(ca, connect_to=connect_to), clock)
    dane = None
    if d.dane:
        # RFC 7672 §2.2: TLSA records count only with the AD bit of a validating resolver.
        dane = DnsPythonResolver(d.dane_nameservers or settings.dns.nameservers)
    verify, smarthost = verify_contexts(settings)
    return OutboundCourier(
        outbound_settings(settings),
        resolver,
        clock=clock,
        mta_sts=mta_sts,
        dane_resolver=dane,
        verify_context=verify,
        smarthost_context=smarthost,
    )
