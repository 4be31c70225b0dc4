"""The DMARC aggregate report (RFC 7489 §7.2 and Appendix C): one XML document per policy
domain and interval, built from the store's events.

Theory of operation: the events of one policy domain become one <record> per distinct row
(source IP, what we did, the DMARC-aligned results, the identifiers and the raw SPF/DKIM
results), with the counts summed; <policy_published> is the record as last seen. The XML has
no namespace (see tests/data/dmarc-rua-rfc7489.xsd) and is built with ElementTree, which
escapes whatever a sender put in its domains and selectors. An IPv6 source is written in full
form, the only one the schema's IPAddress type admits.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from hato.reports.records import DmarcEvent


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who sends the reports: RFC 7489 §7.2.2 org_name and email; `domain` is the receiver
    named in the file name and Subject (RFC 7489 §7.2.1.1)."""

    org_name: str
    email: str
    domain: str


def _row_key(e: DmarcEvent) -> tuple[object, ...]:
    return (e.source_ip, e.disposition, e.dkim_aligned, e.spf_aligned, e.reason, e.header_from,
            e.envelope_from, e.spf_domain, e.spf_result, e.dkim)  # fmt: skip


def _source_ip(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    return address.exploded if address.version == 6 else str(address)


# XML 1.0 §2.2 Char: what a document may contain at all (ElementTree escapes <, & and quotes,
# but writes a control character as it is, which no parser would read back).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _add(parent: ET.Element, tag: str, text: object) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = _NOT_XML.sub("\ufffd", str(text))  # a signer's d= or s= is anyone's text
    return child


def aggregate_xml(
    submitter: Submitter,
    policy_domain: str,
    events: Sequence[DmarcEvent],
    *,
    begin: int,
    end: int,
    report_id: str,
) -> bytes:
    """RFC 7489 Appendix C feedback for `events` (all of `policy_domain`)."""
    root = ET.Element("feedback")
    _add(root, "version", "1.0")
    meta = ET.SubElement(root, "report_metadata")
    _add(meta, "org_name", submitter.org_name)
    _add(meta, "email", submitter.email)
    _add(meta, "report_id", report_id)
    dates = ET.SubElement(meta, "date_range")
    _add(dates, "begin", begin)
    _add(dates, "end", end)
    policy = max(events, key=lambda e: e.time).policy
    published = ET.SubElement(root, "policy_published")
    fields = {"domain": policy_domain, "adkim": policy.adkim, "aspf": policy.aspf,
              "p": policy.p, "sp": policy.sp, "pct": policy.pct, "fo": policy.fo}  # fmt: skip
    for tag, value in fields.items():
        _add(published, tag, value)
    rows: dict[tuple[object, ...], list[DmarcEvent]] = {}
    for event in events:
        rows.setdefault(_row_key(event), []).append(event)
    for group in rows.values():
        _record(root, group[0], sum(e.count for e in group))
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


def _record(root: ET.Element, event: DmarcEvent, count: int) -> None:
    record = ET.SubElement(root, "record")
    row = ET.SubElement(record, "row")
    _add(row, "source_ip", _source_ip(event.source_ip))
    _add(row, "count", count)
    evaluated = ET.SubElement(row, "policy_evaluated")
    _add(evaluated, "disposition", event.disposition)
    _add(evaluated, "dkim", "pass" if event.dkim_aligned else "fail")
    _add(evaluated, "spf", "pass" if event.spf_aligned else "fail")
    if event.reason:
        reason = ET.SubElement(evaluated, "reason")
        _add(reason, "type", event.reason)
    identifiers = ET.SubElement(record, "identifiers")
    # RFC 7489 Appendix C IdentifierType: envelope_from (the RFC 5321.MailFrom domain, empty
    # for the null reverse path) is required before header_from.
    _add(identifiers, "envelope_from", event.envelope_from)
    _add(identifiers, "header_from", event.header_from)
    results = ET.SubElement(record, "auth_results")
    for dkim in event.dkim:
        node = ET.SubElement(results, "dkim")
        _add(node, "domain", dkim.domain)
        if dkim.selector:
            _add(node, "selector", dkim.selector)
        _add(node, "result", dkim.result)
    spf = ET.SubElement(results, "spf")
    _add(spf, "domain", event.spf_domain)
    # RFC 7208 §2.4: the MAIL FROM identity, or HELO for the null reverse path.
    _add(spf, "scope", "mfrom" if event.envelope_from else "helo")
    _add(spf, "result", event.spf_result)


def file_name(submitter: Submitter, policy_domain: str, begin: int, end: int) -> str:
    """RFC 7489 §7.2.1.1: receiver "!" policy-domain "!" begin "!" end "." extension."""
    return f"{submitter.domain}!{policy_domain}!{begin}!{end}.xml.gz"


def subject(submitter: Submitter, policy_domain: str, report_id: str) -> str:
    """RFC 7489 §7.2.1.1: the Subject a report processor files it by."""
    return f"Report Domain: {policy_domain} Submitter: {submitter.domain} Report-ID: <{report_id}>"
