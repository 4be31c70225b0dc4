"""Run every doctor check for a `DoctorSetup`, in the order an admin fixes things: DNS names
first, then authentication records, TLS, reputation, and the network.

May import hato.model, hato.authcheck, hato.delivery's pure helpers and hato.doctor only.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

from hato.delivery.mtasts import PolicyFetcher
from hato.doctor import dnschecks, egress, selftest, tlschecks
from hato.doctor.report import Finding
from hato.doctor.setup import DoctorSetup
from hato.model.dns import Resolver


async def run_checks(
    setup: DoctorSetup,
    resolver: Resolver,
    fetcher: PolicyFetcher,
    *,
    now: datetime.datetime,
    state_dir: Path | None = None,
) -> list[Finding]:
    findings: list[Finding] = []
    findings += await dnschecks.mx_host(resolver, setup)
    addresses = await dnschecks.outbound_addresses(resolver, setup)
    senders = addresses
    if setup.smarthost is not None:
        # Mail leaves through the relay (always, or while port 25 is blocked): SPF must let
        # the relay's addresses send too.
        relay = tuple(await dnschecks.host_addresses(resolver, setup.smarthost.host))
        senders = relay if not setup.smarthost.fallback else addresses + relay
    for address in addresses:
        findings += await dnschecks.ptr(resolver, setup, address)
    findings += await dnschecks.helo_spf(resolver, setup, addresses)
    for domain in setup.domains:
        findings += await dnschecks.mx(resolver, setup, domain.name)
        findings += await dnschecks.spf(resolver, setup, domain.name, senders)
        findings += await dnschecks.dkim(resolver, domain)
        findings += await dnschecks.dmarc(resolver, domain.name)
        findings += await tlschecks.mta_sts(resolver, setup, domain.name, fetcher, state_dir)
        findings += await dnschecks.tlsrpt(resolver, domain.name)
    findings += tlschecks.certificate(setup, now)
    findings += await tlschecks.tlsa(resolver, setup)
    findings += await tlschecks.caa(resolver, setup)
    listed = await asyncio.gather(
        *(dnschecks.dnsbl(resolver, zone, a) for a in addresses for zone in setup.dnsbls)
    )
    for one in listed:
        findings += one
    findings += await selftest.self_tests(setup)
    findings += await egress.egress(resolver, setup)
    return findings
