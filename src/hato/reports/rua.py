"""Where reports go: the `rua` of a domain's DMARC record (RFC 7489 §6.2, §7.1) or TLSRPT
record (RFC 8460 §3), looked up when the report is sent.

Theory of operation: only `mailto:` destinations are used for DMARC (RFC 7489 §6.2 allows
others; receivers are not required to support them); a `!size` suffix is the largest report
the domain accepts (RFC 7489 §6.2: k, m, g, t units; no unit: octets). A destination outside
the policy domain's organizational domain must agree to receive its reports (RFC 7489 §7.1):
`<policy-domain>._report._dmarc.<destination-domain>` must have a TXT record starting with
`v=DMARC1`; without it, nothing is sent there (a domain cannot make us mail reports to a
stranger). For TLS-RPT (RFC 8460 §3): exactly one `v=TLSRPTv1` record at
`_smtp._tls.<domain>`, its rua a comma-separated list of mailto: and https: URIs.

Must not import anything of hato but model and authcheck (and this room).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from hato.authcheck import organizational_domain
from hato.authcheck.dmarc import DmarcRecordError, is_dmarc_record, parse_record
from hato.model.address import AddressError, parse_mailbox
from hato.model.dns import DnsNameError, DnsStatus, RdType, Resolver

MAX_DESTINATIONS = 4  # RFC 7489 §6.2: a receiver MAY limit the number of URIs it reports to
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True, slots=True)
class Destination:
    """A report address (or for TLS-RPT an https URL) and the size it accepts (0: any)."""

    uri: str
    address: str = ""  # the mailto: address
    limit: int = 0


async def _texts(resolver: Resolver, name: str) -> list[str] | None:
    """The TXT strings at `name`, None when DNS could not say."""
    try:
        answer = await resolver.query(name, RdType.TXT)
    except DnsNameError:
        return []
    if answer.status is DnsStatus.TEMPFAIL:
        return None
    return [raw.decode("utf-8", errors="replace") for raw in answer.texts()]


def parse_mailto(uri: str) -> Destination | None:
    """RFC 7489 §6.2: ``mailto:addr[!size]``; None for another scheme or a bad address."""
    uri = uri.strip()
    size = ""
    if "!" in uri:
        uri, _, size = uri.rpartition("!")
    scheme, _, rest = uri.partition(":")
    if scheme.lower() != "mailto" or not rest:
        return None
    address = urllib.parse.unquote(rest.split("?", 1)[0])
    try:
        parsed = parse_mailbox(address)
    except AddressError:
        return None
    limit = 0
    if size:
        digits, unit = size.rstrip("kmgtKMGT"), size[len(size.rstrip("kmgtKMGT")) :].lower()
        if not digits.isdigit() or len(unit) > 1:
            return None
        limit = int(digits) * _UNITS[unit]
    return Destination(uri, str(parsed), limit)


async def dmarc_destinations(
    resolver: Resolver, policy_domain: str
) -> tuple[list[Destination], list[str]]:
    """The authorised mailto: destinations of `policy_domain`'s DMARC record, and what was
    left out and why (for the log)."""
    texts = await _texts(resolver, f"_dmarc.{policy_domain}")
    records = [t for t in texts or [] if is_dmarc_record(t)]
    if texts is None:
        return [], [f"_dmarc.{policy_domain}: temporary DNS failure"]
    if len(records) != 1:
        return [], [f"_dmarc.{policy_domain}: {len(records)} DMARC records"]
    try:
        record = parse_record(records[0])
    except DmarcRecordError as exc:
        return [], [f"_dmarc.{policy_domain}: {exc}"]
    found: list[Destination] = []
    skipped: list[str] = []
    for uri in record.rua[:MAX_DESTINATIONS]:
        destination = parse_mailto(uri)
        if destination is None:
            skipped.append(f"{uri}: not a mailto: address")
        elif not await external_allowed(resolver, policy_domain, destination.address):
            skipped.append(f"{uri}: not authorised by {_verify_name(policy_domain, destination)}")
        else:
            found.append(destination)
    return found, skipped


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _verify_name(policy_domain: str, destination: Destination) -> str:
    return f"{policy_domain}._report._dmarc.{_domain(destination.address)}"


async def external_allowed(resolver: Resolver, policy_domain: str, address: str) -> bool:
    """RFC 7489 §7.1: a destination in another organizational domain must publish
    ``<policy-domain>._report._dmarc.<its domain>`` TXT "v=DMARC1"."""
    target = _domain(address)
    if organizational_domain(target) == organizational_domain(policy_domain):
        return True
    texts = await _texts(resolver, f"{policy_domain}._report._dmarc.{target}")
    return any(is_dmarc_record(t) for t in texts or [])


async def tlsrpt_destinations(
    resolver: Resolver, policy_domain: str
) -> tuple[list[Destination], list[str]]:
    """RFC 8460 §3: the rua of the one v=TLSRPTv1 record at _smtp._tls.<domain>."""
    name = f"_smtp._tls.{policy_domain}"
    texts = await _texts(resolver, name)
    if texts is None:
        return [], [f"{name}: temporary DNS failure"]
    records = [t for t in texts if t.strip().startswith("v=TLSRPTv1")]
    if len(records) != 1:
        return [], [f"{name}: {len(records)} TLSRPT records"]
    found: list[Destination] = []
    skipped: list[str] = []
    for field in records[0].split(";"):
        key, _, value = field.strip().partition("=")
        if key.strip() != "rua":
            continue
        for uri in value.split(",")[:MAX_DESTINATIONS]:
            uri = uri.strip()
            if uri.lower().startswith("https:"):
                found.append(Destination(uri))
                continue
            destination = parse_mailto(uri)
            if destination is None:
                skipped.append(f"{uri}: neither mailto: nor https:")
            else:
                found.append(destination)
    return found, skipped
