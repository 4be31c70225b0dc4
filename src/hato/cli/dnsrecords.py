"""``hato dns``: the DNS records each local domain needs, and ``--check`` against live DNS.

Records: MX (RFC 5321 §5.1), SPF (RFC 7208), DKIM (RFC 6376 §3.6.1), DMARC (RFC 7489 §6.3),
MTA-STS (RFC 8461 §3.1, §3.2: a TXT record whose id is a hash of the policy file the [wkd] web
endpoint serves over HTTPS), TLS-RPT (RFC 8460 §3), the SRV records of RFC 6186 §3 that let mail
clients find submission (and IMAP), the mta-sts/autoconfig names of the web endpoint and the SPF
record of the HELO name (printed, not checked), and the PTR/EHLO name to ask the hosting
provider for (forward-confirmed reverse DNS is what receivers expect of a mail server).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.options import load

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.model.dns import Resolver


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # absolute, without the trailing dot
    rtype: str
    value: str  # as written in a zone file (TXT quoted)
    purpose: str
    # For --check: what must be found (a TXT prefix like "v=spf1", an MX host, ...).
    expect: str = ""
    checked: bool = True  # False: a hint --check does not look up (CNAME, SRV)


def _quoted(text: str) -> str:
    # RFC 1035 §3.3.14: character-strings of at most 255 octets.
    return " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))


def dkim_txt(settings: Settings, domain: str, selector: str) -> str | None:
    path = Path(settings.server.data_dir) / "dkim" / domain.lower() / f"{selector}.key"
    if not path.exists():
        return None
    from hato.authcheck import load_signing_key

    return load_signing_key(path.read_bytes()).dns_txt()


def records(settings: Settings, ip: str | None) -> list[Record]:
    from hato.boot.web import publications
    from hato.server.clientsetup import sts_record

    published = publications(settings)
    host = settings.server.hostname
    out: list[Record] = []
    if ip:
        rtype = "AAAA" if ":" in ip else "A"
        out.append(Record(host, rtype, ip, "the mail server's address", ip))
    if host.lower() not in (d.name.lower() for d in settings.domains):
        # RFC 7208 §2.3, §2.4: bounces go out with an empty MAIL FROM (those of mail from
        # outside unsigned), so receivers check SPF for the HELO name. A hint: hato doctor's
        # spf-helo checks it against the outbound addresses.
        purpose = "SPF of the HELO name: what our bounces pass DMARC by"
        out.append(Record(host, "TXT", _quoted("v=spf1 a -all"), purpose, checked=False))
    for domain in settings.domains:
        d = domain.name
        spf = "v=spf1 mx " + (f"ip{6 if ip and ':' in ip else 4}:{ip} " if ip else "") + "-all"
        out += [
            Record(d, "MX", f"10 {host}.", "where the world delivers mail for " + d, host),
            Record(d, "TXT", _quoted(spf), "SPF: only our MX hosts send for " + d, "v=spf1"),
        ]
        txt = dkim_txt(settings, d, domain.dkim_selector)
        if txt is not None:
            name = f"{domain.dkim_selector}._domainkey.{d}"
            out.append(Record(name, "TXT", _quoted(txt), "DKIM public key", txt))
        dmarc = f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}"
        out += [
            Record(f"_dmarc.{d}", "TXT", _quoted(dmarc), "DMARC policy", "v=DMARC1"),
            Record(
                f"_mta-sts.{d}",
                "TXT",
                _quoted(sts_record(published[d.lower()])),
                f"MTA-STS: a policy is at https://mta-sts.{d}/.well-known/mta-sts.txt",
                "v=STSv1",
            ),
            Record(
                f"_smtp._tls.{d}",
                "TXT",
                _quoted(f"v=TLSRPTv1; rua=mailto:postmaster@{d}"),
                "TLS-RPT: where senders report TLS failures",
                "v=TLSRPTv1",
            ),
        ]
        out += _client_records(settings, d)
    return out


def _client_records(settings: Settings, d: str) -> list[Record]:
    """The web endpoint's names and the RFC 6186 SRV records of `d`: hints, not checked."""
    from hato.boot.web import submission_ports
    from hato.server.clientsetup import SubmissionSecurity

    host = settings.server.hostname
    out = [
        Record(f"{name}.{d}", "CNAME", f"{host}.", purpose, checked=False)
        for name, purpose in (
            ("mta-sts", "the web endpoint ([wkd] address) serves the MTA-STS policy here"),
            ("autoconfig", "the web endpoint answers mail clients' autoconfig here"),
        )
    ]
    ports = submission_ports(settings)
    for service, security in (
        ("_submissions", SubmissionSecurity.IMPLICIT),
        ("_submission", SubmissionSecurity.STARTTLS),
    ):
        port = next((p.port for p in ports if p.security is security), None)
        # RFC 6186 §3.1 (and RFC 8314 §5.1 for _submissions); RFC 6186 §4: target "." says
        # the service is not offered.
        value = f"0 1 {port} {host}." if port is not None else "0 0 0 ."
        purpose = f"RFC 6186: mail clients find {service[1:]} here"
        out.append(Record(f"{service}._tcp.{d}", "SRV", value, purpose, checked=False))
    if settings.wkd.imap_port is not None:
        value = f"0 1 {settings.wkd.imap_port} {host}."
        purpose = "RFC 6186 §3.2: mail clients find IMAP over TLS here"
        out.append(Record(f"_imaps._tcp.{d}", "SRV", value, purpose, checked=False))
    return out


async def _check(resolver: Resolver, record: Record) -> str | None:
    from hato.model.dns import RdType

    answer = await resolver.query(record.name, RdType(record.rtype))
    if not answer.ok:
        return f"{record.name} {record.rtype}: {answer.status.value} (want: {record.value})"
    if record.rtype == "MX":
        hosts = [mx.host for mx in answer.mx()]
        if record.expect.lower() not in hosts:
            return f"{record.name} MX: points to {', '.join(hosts)}, not {record.expect}"
        return None
    if record.rtype in ("A", "AAAA"):
        found = ", ".join(answer.addresses())
        if record.expect not in answer.addresses():
            return f"{record.name} {record.rtype}: {found}, not {record.expect}"
        return None
    texts = [t.decode("utf-8", "replace") for t in answer.texts()]
    matching = [t for t in texts if t.startswith(record.expect)]
    if not matching:
        return f"{record.name} TXT: no record starting {record.expect!r} (want: {record.value})"
    if len(matching) > 1 and record.expect in ("v=spf1", "v=DMARC1"):
        return f"{record.name} TXT: {len(matching)} {record.expect} records; there must be one"
    return None


def dns_command(args: argparse.Namespace) -> int:
    loaded = load(args)
    settings = loaded.settings
    wanted = records(settings, args.ip)
    if not args.check:
        for record in wanted:
            print(f"; {record.purpose}")
            print(f"{record.name}. IN {record.rtype} {record.value}")
        from hato.boot.web import publications
        from hato.server.clientsetup import sts_policy

        for domain, published in publications(settings).items():
            print(f"; MTA-STS policy served at https://mta-sts.{domain}/.well-known/mta-sts.txt:")
            for line in sts_policy(published).splitlines():
                print(f";   {line}")
        print(f"; reverse DNS: ask your provider for PTR <your IP> -> {settings.server.hostname}")
        return 0
    from hato.dns import DnsPythonResolver

    resolver = DnsPythonResolver(settings.dns.nameservers, timeout=settings.dns.timeout)

    wanted = [r for r in wanted if r.checked]

    async def run() -> list[str | None]:
        return list(await asyncio.gather(*(_check(resolver, r) for r in wanted)))

    results = asyncio.run(run())
    problems = [p for p in results if p]
    for record, problem in zip(wanted, results, strict=True):
        print(
            f"OK       {record.name} {record.rtype}" if problem is None else f"PROBLEM  {problem}"
        )
    return 1 if problems else 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    sub = commands.add_parser(
        "dns",
        help="print the DNS records to publish (or --check them)",
        description="The DNS records every local domain needs: MX, SPF, DKIM, DMARC, MTA-STS, "
        "TLS-RPT, and the SRV and CNAME records of client setup; --check compares the "
        "first ones with what DNS answers now.",
    )
    sub.set_defaults(handler=dns_command)
    sub.add_argument("--check", action="store_true", help="compare with live DNS; exit 1 if wrong")
    sub.add_argument("--ip", help="this server's public address (adds A/AAAA and SPF ip4/ip6)")
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
