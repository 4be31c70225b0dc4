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
import sys
from pathlib import Path
from typing import Any

from hato.cli.errors import EX_FAILURE
from hato.cli.options import load


def doctor_command(args: argparse.Namespace) -> int:
    settings = load(args).settings
    from hato.boot.doctorwatch import doctor_setup, policy_fetcher
    from hato.dns import DnsPythonResolver
    from hato.doctor import has_problems, render_json, render_text, run_checks

    resolver = DnsPythonResolver(settings.dns.nameservers, timeout=settings.dns.timeout)
    fetcher = policy_fetcher(settings)
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
        description="Check, per domain, what receivers see: MX, PTR, SPF (and the hostname's), "
        "DKIM, DMARC, MTA-STS, TLS-RPT, TLSA, the certificate, block lists, open relay, "
        "submission, and whether outbound port 25 is blocked. Exit 1 if anything is wrong.",
    )
    sub.set_defaults(handler=doctor_command)
    sub.add_argument("--json", action="store_true", help="print the findings as JSON")
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
