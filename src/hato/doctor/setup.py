"""`DoctorSetup`: what the doctor checks against, built by the CLI from hato.toml.

The doctor room never reads the configuration itself (import-linter: it may not import
hato.config); the composition root (hato.cli.doctor, or the server's periodic check) fills this
value in. Everything that reaches the network (DNS, the MTA-STS policy fetch, the port 25
probes) is passed in, so tests point it at a test DNS server and loopback peers.

May import hato.model and hato.delivery's pure helpers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DomainSetup:
    name: str
    dkim_selector: str
    dkim_txt: str | None  # the TXT Hato would publish for the key it signs with; None: no key


@dataclass(frozen=True, slots=True)
class SmarthostSetup:
    host: str
    port: int
    fallback: bool  # only used when port 25 is blocked


@dataclass(frozen=True, slots=True)
class Listener:
    role: str  # "mx", "submission", "submissions"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DoctorSetup:
    hostname: str  # the MX and EHLO name
    domains: tuple[DomainSetup, ...]
    addresses: tuple[str, ...]  # our outbound addresses; () -> the A/AAAA of hostname
    certificate: Path | None  # the PEM chain served on our listeners
    egress_targets: tuple[tuple[str, int], ...]  # (host, port) to probe TCP port 25 with
    egress_timeout: float
    dnsbls: tuple[str, ...]
    smarthost: SmarthostSetup | None = None
    listeners: tuple[Listener, ...] = ()
    cert_warn_days: int = 21  # below this many days of validity: a problem
    caa_issuer: str | None = None  # the CA's CAA issuer domain (e.g. letsencrypt.org)
