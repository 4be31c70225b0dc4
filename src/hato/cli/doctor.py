"""``hato doctor``: check this server's deliverability from outside, and say how to fix it.

Builds a `hato.doctor.DoctorSetup` from hato.toml and runs every check with the configured
resolver ([dns] nameservers) and the MTA-STS fetch settings of [delivery], so a test points it
all at a test DNS server and loopback peers. Exit 0: no problem (warnings allowed); 1: at least
one problem.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.errors import EX_FAILURE
from hato.cli.main import load

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.doctor import DoctorSetup


def doctor_setup(settings: Settings) -> DoctorSetup:
    from hato.cli.dnsrecords import dkim_txt
    from hato.config.doctor_sections import split_target
    from hato.doctor import DoctorSetup, DomainSetup, Listener, SmarthostSetup

    d = settings.doctor
    addresses = d.addresses
    if not addresses and settings.delivery.source_address is not None:
        addresses = (settings.delivery.source_address,)
    smarthost = None
    if settings.smarthost is not None:
        smarthost = SmarthostSetup(
            settings.smarthost.host, settings.smarthost.port, settings.smarthost.fallback
        )
    return DoctorSetup(
        hostname=settings.server.hostname,
        domains=tuple(
            DomainSetup(x.name, x.dkim_selector, dkim_txt(settings, x.name, x.dkim_selector))
            for x in settings.domains
        ),
        addresses=addresses,
        certificate=settings.tls.cert if settings.tls is not None else None,
        egress_targets=tuple(split_target(t) for t in d.egress_targets),
        egress_timeout=d.egress_timeout,
        dnsbls=d.dnsbls,
        smarthost=smarthost,
        listeners=tuple(
            Listener(x.role.value, x.address.host, x.address.port) for x in settings.listeners
        ),
        cert_warn_days=d.cert_warn_days,
    )


def doctor_command(args: argparse.Namespace) -> int:
    settings = load(args).settings
    from hato.delivery.mtasts import HttpsPolicyFetcher
    from hato.dns import DnsPythonResolver
    from hato.doctor import has_problems, render_json, render_text, run_checks

    resolver = DnsPythonResolver(settings.dns.nameservers, timeout=settings.dns.timeout)
    delivery = settings.delivery
    ca = ssl.create_default_context(
        cafile=str(delivery.mta_sts_ca_file) if delivery.mta_sts_ca_file else None
    )
    connect_to = None
    if delivery.mta_sts_connect_to:
        host, _, port = delivery.mta_sts_connect_to.rpartition(":")
        connect_to = (host.strip("[]"), int(port))
    fetcher = HttpsPolicyFetcher(ca, timeout=20.0, connect_to=connect_to)
    findings = asyncio.run(
        run_checks(
            doctor_setup(settings),
            resolver,
            fetcher,
            now=datetime.datetime.now(datetime.UTC),
            state_dir=Path(settings.server.data_dir) / "doctor",
        )
    )
    sys.stdout.write(render_json(findings) + "\n" if args.json else render_text(findings))
    return EX_FAILURE if has_problems(findings) else 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    sub = commands.add_parser(
        "doctor",
        help="check deliverability from outside (DNS, TLS, block lists, port 25)",
        description="Check, per domain, what receivers see: MX, PTR, SPF, DKIM, DMARC, "
        "MTA-STS, TLS-RPT, TLSA, the certificate, block lists, open relay, submission, and "
        "whether outbound port 25 is blocked. Exit 1 if anything is wrong.",
    )
    sub.set_defaults(handler=doctor_command)
    sub.add_argument("--json", action="store_true", help="print the findings as JSON")
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
