"""The doctor's TLS checks: our certificate, TLSA records (RFC 7672), MTA-STS (RFC 8461).

Certificate: the leaf names the MX/EHLO name (RFC 6125 §6.4: a DNS-ID, one leftmost wildcard
label at most), each certificate of the chain is signed by the next, and how many days are
left. TLSA: if `_25._tcp.MX` has records, one DANE-EE record (RFC 7672 §3.1.1) must match the
certificate we serve, else DANE senders stop delivering. MTA-STS: the TXT record parses, the
policy file is fetched as a sending MTA would (HTTPS, certificate checked, RFC 8461 §3.3) and
its mx lines match our MX; and when the policy changed since the last run, the id must have
changed too (§3.1: senders refetch only on a new id).

May import hato.model, hato.delivery's pure helpers and hato.doctor only.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from hato.delivery.dane import tlsa_matches, tlsa_name
from hato.delivery.mtasts import (
    PolicyFetcher,
    StsError,
    StsFetchError,
    parse_policy,
    parse_sts_record,
)
from hato.doctor.report import Finding, ok, problem, warning
from hato.doctor.setup import DoctorSetup
from hato.model.dns import DnsStatus, RdType, Resolver

_RENEW = "renew it (certbot renew; then hato reload)"


def _name_matches(pattern: str, host: str) -> bool:
    # RFC 6125 §6.4.3: a wildcard stands for exactly one whole leftmost label.
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def certificate(setup: DoctorSetup, now: datetime.datetime) -> list[Finding]:
    if setup.certificate is None:
        fix = '[tls]\ncert = "/etc/letsencrypt/live/HOST/fullchain.pem"\nkey = "…/privkey.pem"'
        return [problem("certificate", setup.hostname, "no [tls]: STARTTLS is not offered", fix)]
    try:
        chain = load_chain(setup.certificate)
    except (OSError, ValueError) as exc:
        return [problem("certificate", setup.hostname, f"{setup.certificate}: {exc}", _RENEW)]
    leaf = chain[0]
    findings: list[Finding] = []
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if not any(_name_matches(n, setup.hostname) for n in dns_names):
        fix = f"certbot certonly -d {setup.hostname} (a certificate for the MX name)"
        detail = f"names {', '.join(dns_names) or 'none'}, not {setup.hostname}"
        findings.append(problem("certificate", setup.hostname, detail, fix))
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError) as exc:
            detail = f"the chain is broken at {child.subject.rfc4514_string()}: {exc}"
            fix = "serve the full chain (fullchain.pem), leaf first"
            findings.append(problem("certificate", setup.hostname, detail, fix))
            break
    left = leaf.not_valid_after_utc - now
    days = left.days
    if left.total_seconds() <= 0:
        findings.append(problem("certificate", setup.hostname, "expired", _RENEW))
    elif days < setup.cert_warn_days:
        detail = f"expires in {days} day(s) ({leaf.not_valid_after_utc:%Y-%m-%d})"
        findings.append(problem("certificate", setup.hostname, detail, _RENEW))
    if not findings:
        findings.append(ok("certificate", setup.hostname, f"valid for {days} more days"))
    return findings


async def tlsa(resolver: Resolver, setup: DoctorSetup) -> list[Finding]:
    name = tlsa_name(setup.hostname, 25)
    answer = await resolver.query(name, RdType.TLSA)
    if answer.status is not DnsStatus.OK or setup.certificate is None:
        return []  # no TLSA records: DANE is not in use, nothing to keep in step
    try:
        der = load_chain(setup.certificate)[0].public_bytes(serialization.Encoding.DER)
    except (OSError, ValueError):
        return []  # the certificate check reports it
    if any(tlsa_matches(r, der) for r in answer.tlsa()):
        return [ok("tlsa", setup.hostname, f"{name} matches the certificate")]
    fix = f"publish the new key's TLSA record before the switch: {name}. IN TLSA 3 1 1 <sha256>"
    detail = f"no record at {name} matches the certificate: DANE senders will not deliver"
    return [problem("tlsa", setup.hostname, detail, fix)]


async def mta_sts(
    resolver: Resolver,
    setup: DoctorSetup,
    domain: str,
    fetcher: PolicyFetcher,
    state_dir: Path | None,
) -> list[Finding]:
    name = f"_mta-sts.{domain}"
    texts = [t.decode("utf-8", "replace") for t in (await resolver.query(name, RdType.TXT)).texts()]
    records = [t for t in texts if t.startswith("v=STSv1")]
    if not records:
        fix = f'{name}. IN TXT "v=STSv1; id=<a new id, e.g. the date>" (see: hato dns)'
        return [warning("mta-sts", domain, "no MTA-STS record: TLS to us can be stripped", fix)]
    try:
        policy_id = parse_sts_record(records[0])
    except StsError as exc:
        return [problem("mta-sts", domain, f"{name}: {exc}", f'{name}. IN TXT "v=STSv1; id=…"')]
    fix = (
        f"serve https://mta-sts.{domain}/.well-known/mta-sts.txt (text/plain) with a "
        f"certificate for mta-sts.{domain}:\nversion: STSv1\nmode: enforce\n"
        f"mx: {setup.hostname}\nmax_age: 604800"
    )
    try:
        text = await fetcher.fetch(domain)
        policy = parse_policy(text, policy_id)
    except (StsFetchError, StsError) as exc:
        return [problem("mta-sts", domain, f"the policy cannot be used: {exc}", fix)]
    if not policy.matches(setup.hostname):
        detail = f"the policy's mx ({', '.join(policy.mx)}) does not match {setup.hostname}"
        return [problem("mta-sts", domain, detail, fix)]
    changed = _remember(state_dir, domain, policy_id, text)
    if changed:
        # RFC 8461 §3.1: senders refetch the policy only when the id changes.
        detail = f"the policy changed but the id ({policy_id}) did not: senders keep the old one"
        new = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
        return [problem("mta-sts", domain, detail, f'{name}. IN TXT "v=STSv1; id={new}"')]
    return [ok("mta-sts", domain, f"id {policy_id}, mode {policy.mode.value}")]


def _remember(state_dir: Path | None, domain: str, policy_id: str, text: str) -> bool:
    """Store (id, digest of the policy) for `domain`; True when the policy text changed while
    the id stayed the same since the last run."""
    if state_dir is None:
        return False
    path = state_dir / "mta-sts.json"
    try:
        seen: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seen = {}
    digest = hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()
    old = seen.get(domain)
    stale = old is not None and old[0] == policy_id and old[1] != digest
    if not stale:
        seen[domain] = [policy_id, digest]
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(seen), encoding="utf-8")
        except OSError:
            pass  # read-only data dir: the check simply has no memory
    return stale


async def caa(resolver: Resolver, setup: DoctorSetup) -> list[Finding]:
    """RFC 8659 §3: a CA looks for CAA at the name, then at each parent up to the top; the
    first RRset found decides. Its "issue" properties (§4.2) must name our CA, or renewal
    fails. Without any CAA record every CA may issue."""
    labels = setup.hostname.lower().split(".")
    for start in range(len(labels) - 1):
        name = ".".join(labels[start:])
        answer = await resolver.query(name, RdType.CAA)
        if answer.status is DnsStatus.TEMPFAIL:
            return [warning("caa", setup.hostname, f"DNS did not answer for {name} CAA")]
        records = answer.caa()
        if not records:
            continue
        issuers = {r.value.split(";", 1)[0].strip().lower() for r in records if r.tag == "issue"}
        if not issuers:
            return [ok("caa", setup.hostname, f"CAA at {name} restricts no issuance")]
        if setup.caa_issuer is None:
            return [ok("caa", setup.hostname, f"CAA at {name} allows {', '.join(sorted(issuers))}")]
        if setup.caa_issuer in issuers:
            return [ok("caa", setup.hostname, f"CAA at {name} allows {setup.caa_issuer}")]
        detail = f"CAA at {name} allows {', '.join(sorted(issuers))}, not {setup.caa_issuer}"
        fix = f'{name}. IN CAA 0 issue "{setup.caa_issuer}"'
        return [problem("caa", setup.hostname, detail + ": renewal will fail", fix)]
    return [ok("caa", setup.hostname, "no CAA records: any CA may issue")]
