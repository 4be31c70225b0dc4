"""The doctor's DNS checks, asked as a receiver on the Internet would ask them.

MX (RFC 5321 §5.1) and the MX name's A/AAAA; PTR and forward-confirmed reverse DNS of each
outbound address against the EHLO name (RFC 8601 §3's iprev; receivers such as Gmail refuse
mail from addresses without it); SPF (RFC 7208: present, one record, within the 10-lookup and
2-void-lookup limits of §4.6.4, passing for each outbound address); SPF of the HELO name
(RFC 7208 §2.3, §2.4: what receivers check for our unsigned bounces, sent with an empty MAIL
FROM); DKIM (RFC 6376 §3.6.1: the key in DNS is the key we sign with); DMARC (RFC 7489 §6.3);
TLS-RPT (RFC 8460 §3); DNSBLs (RFC 5782 §2.1: a listed address has an A record 127.0.0.x under
the list's zone).

May import hato.model, hato.authcheck and hato.doctor only.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from hato.authcheck.spf import SpfResultCode, check_host
from hato.doctor.report import Finding, ok, problem, warning
from hato.doctor.setup import DoctorSetup, DomainSetup
from hato.model.dns import DnsStatus, RdType, Resolver

# RFC 5737 §3: a documentation address, never a sender: evaluating SPF for it walks every term
# of the record, so the lookup limits are tested whatever our own address matches first.
_PROBE_ADDRESS = "192.0.2.254"


async def mx(resolver: Resolver, setup: DoctorSetup, domain: str) -> list[Finding]:
    answer = await resolver.query(domain, RdType.MX)
    fix = f"{domain}. IN MX 10 {setup.hostname}."
    if answer.status is DnsStatus.TEMPFAIL:
        return [warning("mx", domain, f"DNS did not answer: {answer.detail}")]
    hosts = [record.host for record in answer.mx()]
    if setup.hostname.lower() not in hosts:
        found = ", ".join(hosts) or answer.status.value
        return [problem("mx", domain, f"MX is {found}, not {setup.hostname}", fix)]
    return [ok("mx", domain, f"MX points at {setup.hostname}")]


async def host_addresses(resolver: Resolver, name: str) -> list[str]:
    found: list[str] = []
    for rdtype in (RdType.A, RdType.AAAA):
        found += (await resolver.query(name, rdtype)).addresses()
    return found


async def mx_host(resolver: Resolver, setup: DoctorSetup) -> list[Finding]:
    found = await host_addresses(resolver, setup.hostname)
    if not found:
        fix = f"{setup.hostname}. IN A <this server's public IPv4 address>"
        return [problem("mx-address", setup.hostname, "no A or AAAA record", fix)]
    return [ok("mx-address", setup.hostname, ", ".join(found))]


async def outbound_addresses(resolver: Resolver, setup: DoctorSetup) -> tuple[str, ...]:
    """[doctor] addresses, else the addresses of our host name (what the courier sends from
    when the machine has one public address)."""
    return setup.addresses or tuple(await host_addresses(resolver, setup.hostname))


async def ptr(resolver: Resolver, setup: DoctorSetup, address: str) -> list[Finding]:
    reverse = ipaddress.ip_address(address).reverse_pointer
    answer = await resolver.query(reverse, RdType.PTR)
    fix = (
        f"ask the provider of {address} for reverse DNS: {reverse}. IN PTR {setup.hostname}.\n"
        f"and publish {setup.hostname}. IN {'AAAA' if ':' in address else 'A'} {address}"
    )
    if answer.status is DnsStatus.TEMPFAIL:
        return [warning("ptr", address, f"DNS did not answer: {answer.detail}")]
    names = list(answer.hosts())
    if not names:
        return [problem("ptr", address, f"no PTR record ({answer.status.value})", fix)]
    if setup.hostname.lower() not in names:
        detail = f"PTR is {', '.join(names)}, not the EHLO name {setup.hostname}"
        return [problem("ptr", address, detail, fix)]
    # RFC 8601 §3 (iprev): the name must lead back to the address.
    if address not in await host_addresses(resolver, setup.hostname):
        detail = f"PTR is {setup.hostname} but {setup.hostname} does not resolve to {address}"
        return [problem("ptr", address, detail, fix)]
    return [ok("ptr", address, f"{setup.hostname}, forward-confirmed")]


def _spf_fix(domain: str, addresses: tuple[str, ...], include: str = "") -> str:
    terms = " ".join(f"ip{6 if ':' in a else 4}:{a}" for a in addresses)
    extra = f" include:{include}" if include else ""
    return f'{domain}. IN TXT "v=spf1 mx {terms}{extra} -all"'


async def spf(
    resolver: Resolver, setup: DoctorSetup, domain: str, senders: tuple[str, ...]
) -> list[Finding]:
    """`senders`: the addresses that send our mail (ours, or the smarthost's)."""
    records = [t for t in (await resolver.query(domain, RdType.TXT)).texts() if _is_spf(t.strip())]
    fix = _spf_fix(domain, senders)
    if not records:
        return [problem("spf", domain, "no SPF record (v=spf1)", fix)]
    if len(records) > 1:
        # RFC 7208 §4.5: more than one record is a permerror.
        return [problem("spf", domain, f"{len(records)} SPF records; there must be one", fix)]
    now = time.time()
    probe = await check_host(
        _PROBE_ADDRESS, domain, f"postmaster@{domain}", helo=setup.hostname, resolver=resolver,
        now=now,
    )  # fmt: skip
    if probe.result is SpfResultCode.PERMERROR:
        detail = f"the record is broken for receivers (permerror: {probe.detail})"
        if "10 DNS" in probe.detail or "void" in probe.detail:
            fix = "RFC 7208 §4.6.4: flatten includes into ip4:/ip6: terms, at most 10 lookups\n"
            fix += _spf_fix(domain, senders)
        return [problem("spf", domain, detail, fix)]
    findings = await _each_address(
        resolver, "spf", domain, setup.hostname, senders, now,
        lambda detail: problem("spf", domain, detail, fix),
    )  # fmt: skip
    return findings or [ok("spf", domain, "one record, within the lookup limits")]


async def _each_address(
    resolver: Resolver,
    check: str,
    name: str,
    helo: str,
    addresses: Iterable[str],
    now: float,
    failed: Callable[[str], Finding],
) -> list[Finding]:
    """SPF's verdict on `name`'s record for each of `addresses` (MAIL FROM postmaster@name):
    a pass is ok, a temperror a warning, anything else what `failed` makes of its detail."""
    findings: list[Finding] = []
    for address in addresses:
        result = await check_host(
            address, name, f"postmaster@{name}", helo=helo, resolver=resolver, now=now
        )
        if result.result is SpfResultCode.PASS:
            findings.append(ok(check, name, f"{address} passes ({result.mechanism})"))
        elif result.result is SpfResultCode.TEMPERROR:
            findings.append(warning(check, name, f"temperror: {result.detail}"))
        else:
            got = f"{result.result.value} ({result.detail or result.mechanism})"
            findings.append(failed(f"{address} gets {got}"))
    return findings


_HELO_WHY = (
    "bounces of mail from outside are sent unsigned with an empty MAIL FROM, so receivers "
    "check SPF for the HELO name (RFC 7208 §2.3, §2.4) and DMARC passes only by it"
)


async def helo_spf(
    resolver: Resolver, setup: DoctorSetup, addresses: tuple[str, ...]
) -> list[Finding]:
    """SPF for `[server] hostname`, the HELO identity and, with an empty MAIL FROM, the
    MAIL FROM identity too (RFC 7208 §2.4: postmaster@ the HELO name). `addresses`: ours."""
    name = setup.hostname
    if setup.smarthost is not None and not setup.smarthost.fallback:
        return []  # all mail leaves through the relay, under its HELO name, not ours
    if name.lower() in (d.name.lower() for d in setup.domains):
        return []  # the domain's own spf check evaluates this record for these addresses
    own = await host_addresses(resolver, name)
    terms = "".join(f" ip{6 if ':' in a else 4}:{a}" for a in addresses if a not in own)
    fix = f'{name}. IN TXT "v=spf1 a{terms} -all"'
    answer = await resolver.query(name, RdType.TXT)
    if answer.status is DnsStatus.TEMPFAIL:
        return [warning("spf-helo", name, f"DNS did not answer: {answer.detail}")]
    if not any(_is_spf(t.strip()) for t in answer.texts()):
        return [warning("spf-helo", name, f"no SPF record (v=spf1): {_HELO_WHY}", fix)]
    findings = await _each_address(
        resolver, "spf-helo", name, name, addresses, time.time(),
        lambda detail: warning("spf-helo", name, f"{detail}: {_HELO_WHY}", fix),
    )  # fmt: skip
    return findings or [ok("spf-helo", name, "an SPF record (no outbound address to check)")]


def _is_spf(text: bytes) -> bool:
    # RFC 7208 §4.5: "v=spf1" alone or followed by a space.
    return text.lower() == b"v=spf1" or text.lower().startswith(b"v=spf1 ")


def _tag(text: str, name: str) -> str | None:
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


async def dkim(resolver: Resolver, domain: DomainSetup) -> list[Finding]:
    name = f"{domain.dkim_selector}._domainkey.{domain.name}"
    if domain.dkim_txt is None:
        fix = f"hato dkim keygen {domain.name} --selector {domain.dkim_selector}"
        return [warning("dkim", domain.name, "Hato has no signing key: mail goes unsigned", fix)]
    fix = f'{name}. IN TXT "{domain.dkim_txt}"'
    answer = await resolver.query(name, RdType.TXT)
    if answer.status is DnsStatus.TEMPFAIL:
        return [warning("dkim", domain.name, f"DNS did not answer: {answer.detail}")]
    texts = [t.decode("utf-8", "replace") for t in answer.texts()]
    if not texts:
        return [problem("dkim", domain.name, f"no key at {name}", fix)]
    # RFC 6376 §3.6.1: p= is the public key; compared without the spaces folding may add.
    ours = "".join((_tag(domain.dkim_txt, "p") or "").split())
    published = ["".join((_tag(t, "p") or "").split()) for t in texts]
    if ours not in published:
        detail = f"the key at {name} is not the key Hato signs with (stale?): verification fails"
        return [problem("dkim", domain.name, detail, fix)]
    return [ok("dkim", domain.name, f"{name} holds the signing key")]


async def dmarc(resolver: Resolver, domain: str) -> list[Finding]:
    name = f"_dmarc.{domain}"
    fix = f'{name}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
    answer = await resolver.query(name, RdType.TXT)
    records = [t.decode("utf-8", "replace") for t in answer.texts()]
    records = [t for t in records if t.replace(" ", "").startswith("v=DMARC1")]
    if not records:
        return [problem("dmarc", domain, "no DMARC record", fix)]
    if len(records) > 1:
        # RFC 7489 §6.6.3: more than one record: no policy applies.
        return [problem("dmarc", domain, f"{len(records)} DMARC records; one only", fix)]
    policy = _tag(records[0], "p")
    if policy not in ("none", "quarantine", "reject"):
        return [problem("dmarc", domain, f"p={policy} is not none/quarantine/reject", fix)]
    findings = [ok("dmarc", domain, f"p={policy}")]
    for tag in ("rua", "ruf"):
        for uri in (_tag(records[0], tag) or "").split(","):
            findings += await _report_uri(resolver, domain, tag, uri.strip())
    if policy == "none":
        findings.append(
            warning("dmarc", domain, "p=none: receivers take no action on forged mail", fix)
        )
    return findings


async def _report_uri(resolver: Resolver, domain: str, tag: str, uri: str) -> list[Finding]:
    if not uri:
        return []
    address = uri.removeprefix("mailto:").partition("!")[0]
    target = address.rpartition("@")[2].lower()
    has_mx = bool(target) and (await resolver.query(target, RdType.MX)).ok
    if not has_mx and not (target and await host_addresses(resolver, target)):
        detail = f"{tag}={uri}: {target or '?'} has no MX or address, reports are lost"
        return [problem("dmarc", domain, detail, f"rua=mailto:postmaster@{domain}")]
    if target != domain.lower() and not target.endswith("." + domain.lower()):
        # RFC 7489 §7.1: a foreign report domain must publish DOMAIN._report._dmarc.TARGET.
        name = f"{domain}._report._dmarc.{target}"
        if not (await resolver.query(name, RdType.TXT)).texts():
            fix = f'{name}. IN TXT "v=DMARC1" (in the zone of {target})'
            return [problem("dmarc", domain, f"{tag}={uri} lacks {name}", fix)]
    return []


async def tlsrpt(resolver: Resolver, domain: str) -> list[Finding]:
    name = f"_smtp._tls.{domain}"
    texts = [t.decode("utf-8", "replace") for t in (await resolver.query(name, RdType.TXT)).texts()]
    if not any(t.startswith("v=TLSRPTv1") for t in texts):
        fix = f'{name}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{domain}"'
        return [warning("tls-rpt", domain, "no TLS-RPT record: no reports of TLS failures", fix)]
    return [ok("tls-rpt", domain, "present")]


async def dnsbl(resolver: Resolver, zone: str, address: str) -> list[Finding]:
    ip = ipaddress.ip_address(address)
    # RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: nibbles reversed).
    labels = ip.reverse_pointer.rsplit(".", 2)[0]
    answer = await resolver.query(f"{labels}.{zone}", RdType.A)
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return [ok("dnsbl", address, f"not listed on {zone}")]
    if answer.status is DnsStatus.TEMPFAIL:
        return [warning("dnsbl", address, f"{zone} did not answer: {answer.detail}")]
    codes = answer.addresses()
    if any(c.startswith("127.255.255.") for c in codes):
        # Spamhaus answers 127.255.255.x to queries through public resolvers: no verdict.
        detail = f"{zone} refused the query ({', '.join(codes)}): use your own resolver"
        return [warning("dnsbl", address, detail)]
    fix = f"find out why at the list's web site ({zone}), stop the cause, then ask for removal"
    return [problem("dnsbl", address, f"listed on {zone} ({', '.join(codes)})", fix)]
