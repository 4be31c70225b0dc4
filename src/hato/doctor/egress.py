"""Outbound port 25 (OP25B): can this machine open TCP connections to real MX hosts at all?

Many residential and cloud networks block outbound port 25 ("Outbound Port 25 Blocking",
M3AAWG's recommendation for consumer networks): every MX connection then times out or is
refused, and mail sits in the queue. The probe opens a TCP connection to a few MX hosts and
closes it at once: it never speaks SMTP, never sends mail. The targets are configurable ([doctor]
egress_targets); tests point them at loopback so they never reach the Internet.

If none can be reached while DNS works, the fix is a smarthost on the submission port (RFC 6409
on 587 with STARTTLS, or RFC 8314 implicit TLS on 465) with AUTH, and the relay's SPF include.

May import hato.model and hato.doctor only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
from dataclasses import dataclass

from hato.doctor.report import Finding, ok, problem, warning
from hato.doctor.setup import DoctorSetup
from hato.model.dns import RdType, Resolver


class Reach(enum.Enum):
    CONNECTED = "connected"
    REFUSED = "refused"
    TIMEOUT = "timed out"
    UNRESOLVED = "no address"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Probe:
    host: str
    port: int
    address: str
    reach: Reach
    detail: str = ""


SMARTHOST_FIX = """\
# port 25 is blocked on this network: send through your provider's relay. In hato.toml:
[smarthost]
host = "smtp.your-provider.example"   # your provider's submission server
port = 587                            # 587 with tls = "starttls", or 465 with tls = "implicit"
tls = "starttls"
username = "you@your-provider.example"
password_file = "/etc/hato/smarthost-password"   # the password alone, mode 0600
fallback = true                       # MX first; the relay while port 25 is blocked
# and let the relay send for your domains (SPF, RFC 7208 §5.2):
#   DOMAIN. IN TXT "v=spf1 mx include:<the SPF domain your provider documents> -all\""""


async def _address(resolver: Resolver, host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    for rdtype in (RdType.A, RdType.AAAA):
        found = (await resolver.query(host, rdtype)).addresses()
        if found:
            return found[0]
    return None


async def probe(resolver: Resolver, host: str, port: int, seconds: float) -> Probe:
    address = await _address(resolver, host)
    if address is None:
        return Probe(host, port, "", Reach.UNRESOLVED)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), seconds)
    except ConnectionRefusedError:
        return Probe(host, port, address, Reach.REFUSED)
    except TimeoutError:
        return Probe(host, port, address, Reach.TIMEOUT)
    except OSError as exc:  # network unreachable, no route: as blocked as a refusal
        return Probe(host, port, address, Reach.ERROR, exc.strerror or str(exc))
    writer.close()  # connected is all we wanted to know: no SMTP is spoken
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Probe(host, port, address, Reach.CONNECTED)


async def egress(resolver: Resolver, setup: DoctorSetup) -> list[Finding]:
    if not setup.egress_targets:
        return [warning("egress-25", "", "no [doctor] egress_targets: not checked")]
    probes = await asyncio.gather(
        *(probe(resolver, h, p, setup.egress_timeout) for h, p in setup.egress_targets)
    )
    tried = "; ".join(
        f"{p.host}:{p.port} {p.reach.value}{f' ({p.detail})' if p.detail else ''}" for p in probes
    )
    if any(p.reach is Reach.CONNECTED for p in probes):
        return [ok("egress-25", "", f"outbound TCP port 25 works ({tried})")]
    if all(p.reach is Reach.UNRESOLVED for p in probes):
        return [warning("egress-25", "", f"could not resolve any target ({tried})")]
    detail = f"port 25 is blocked on this network: {tried}"
    smarthost = setup.smarthost
    if smarthost is not None and not smarthost.fallback:
        return [ok("egress-25", "", f"{detail}; all mail goes through {smarthost.host}")]
    if smarthost is not None:
        detail += f"; mail falls back to the smarthost {smarthost.host}:{smarthost.port}"
        return [warning("egress-25", "", detail)]
    return [problem("egress-25", "", detail, SMARTHOST_FIX)]
