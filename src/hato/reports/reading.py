"""Reading the reports others send us: DMARC aggregate reports (RFC 7489 Appendix C, and the
namespaced DMARCbis form) and TLS reports (RFC 8460 §4), as files, compressed or not, or inside
the messages that carried them (RFC 7489 §7.2.1.1, RFC 8460 §5.3).

Theory of operation: hostile input is expected (anyone can mail the postmaster a "report").
Every decompression is bounded: at most MAX_REPORT_SIZE octets come out of one gzip stream or
zip member (a zip bomb stops there, `ReportError`), a zip is read for at most MAX_MEMBERS
members, a message for at most MAX_PARTS parts. XML with a document type declaration is
refused before it is parsed (no DTD, so no entity can expand: the "billion laughs" and
external entities cannot happen); expat is given only what is left. What cannot be read is a
`ReportError` naming why; the caller goes on with the next input.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

MAX_REPORT_SIZE = 50 * 1024 * 1024  # octets of one decompressed report (and of a whole zip)
MAX_EXPANDED = 4 * MAX_REPORT_SIZE  # octets decompressed in all for one input
MAX_DEPTH = 3  # a message, its attachment, a compressed report in it: no deeper nesting
MAX_MEMBERS = 16  # zip members read
MAX_PARTS = 64  # MIME parts looked at in one message
_DOCTYPE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


class ReportError(ValueError):
    """This input is not a report we can read (the text says why)."""


@dataclass(frozen=True, slots=True)
class DmarcRow:
    source_ip: str
    count: int
    disposition: str
    dkim: str  # DMARC-aligned result: pass / fail
    spf: str
    header_from: str
    envelope_from: str = ""
    dkim_results: tuple[tuple[str, str], ...] = ()  # (domain, result) as the reporter saw them
    spf_results: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DmarcReport:
    org_name: str
    report_id: str
    begin: int
    end: int
    policy_domain: str
    policy: str  # p=
    rows: tuple[DmarcRow, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsPolicyResult:
    policy_type: str
    policy_domain: str
    successful: int
    failed: int
    failures: tuple[tuple[str, str, str, int], ...] = ()  # (result-type, mx, ip, count)


@dataclass(frozen=True, slots=True)
class TlsReport:
    org_name: str
    report_id: str
    begin: str
    end: str
    policies: tuple[TlsPolicyResult, ...] = ()


@dataclass(slots=True)
class Found:
    dmarc: list[DmarcReport] = field(default_factory=list)
    tls: list[TlsReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    budget: int = MAX_EXPANDED  # octets still to be decompressed for this input

    def spend(self, data: bytes) -> bytes:
        self.budget -= len(data)
        if self.budget < 0:
            raise ReportError(f"decompresses to more than {MAX_EXPANDED} octets in all")
        return data


def read_reports(data: bytes, name: str = "-") -> Found:
    """Every report in `data` (a report file, compressed or not, or a message carrying some)."""
    found = Found()
    _read(data, name, found, depth=0)
    return found


def _read(data: bytes, name: str, found: Found, depth: int) -> None:
    try:
        archive = data.startswith((b"PK\x03\x04", b"\x1f\x8b"))
        if archive and depth >= MAX_DEPTH:
            raise ReportError("compressed data nested too deep")
        if data.startswith(b"PK\x03\x04"):
            for member, content in _unzip(data):
                _read(found.spend(content), f"{name}:{member}", found, depth + 1)
        elif data.startswith(b"\x1f\x8b"):
            _read(found.spend(gunzip(data)), name, found, depth + 1)
        elif (text := data.lstrip(b"\xef\xbb\xbf \t\r\n")).startswith(b"<"):
            found.dmarc.append(parse_dmarc(text))
        elif text.startswith(b"{"):
            found.tls.append(parse_tlsrpt(text))
        elif depth == 0 and b":" in data[:1000]:
            _read_message(data, name, found, depth)
        else:
            raise ReportError("neither XML, JSON, gzip, zip nor a message")
    except ReportError as exc:
        found.errors.append(f"{name}: {exc}")


def gunzip(data: bytes, limit: int = MAX_REPORT_SIZE) -> bytes:
    """The gzip stream's content, at most `limit` octets (ReportError past it)."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ReportError(f"bad gzip data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ReportError(f"decompresses to more than {limit} octets")
    return out


def _unzip(data: bytes, limit: int = MAX_REPORT_SIZE) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [i for i in archive.infolist() if not i.is_dir()][:MAX_MEMBERS]
        out = []
        left = limit  # for the whole archive: 16 members of 50 MB would be 800 MB at once
        for info in members:
            # The declared size can lie: read at most what is left + 1 whatever it says.
            with archive.open(info) as member:
                content = member.read(left + 1)
            left -= len(content)
            if left < 0:
                raise ReportError(f"decompresses to more than {limit} octets")
            out.append((info.filename, content))
        return out
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise ReportError(f"bad zip file: {exc}") from None


_REPORT_TYPES = ("zip", "gzip", "x-gzip", "xml", "tlsrpt+gzip", "tlsrpt+json", "json")


def _read_message(data: bytes, name: str, found: Found, depth: int) -> None:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(msg, EmailMessage) or not msg.keys():
        raise ReportError("neither XML, JSON, gzip, zip nor a message")
    before = len(found.dmarc) + len(found.tls) + len(found.errors)
    _read_parts(msg, name, found, depth)
    if len(found.dmarc) + len(found.tls) + len(found.errors) == before:
        raise ReportError("a message without a report attached")


def _read_parts(msg: EmailMessage, name: str, found: Found, depth: int) -> None:
    parts = 0
    for part in msg.walk():
        parts += 1
        if parts > MAX_PARTS or part.is_multipart():
            if parts > MAX_PARTS:
                break
            continue
        filename = part.get_filename() or ""
        subtype = part.get_content_subtype()
        wanted = subtype in _REPORT_TYPES or filename.endswith((".zip", ".gz", ".xml", ".json"))
        if part.get_content_maintype() in ("application", "text") and wanted:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                _read(payload, f"{name}:{filename or subtype}", found, depth + 1)


# -- DMARC (RFC 7489 Appendix C) --------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # DMARCbis reports carry a namespace; RFC 7489's do not


def _child(node: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        if node is None:
            return None
        node = next((c for c in node if _local(c.tag) == name), None)
    return node


def _text(node: ET.Element | None, *path: str) -> str:
    found = _child(node, *path)
    return (found.text or "").strip() if found is not None else ""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def parse_dmarc(xml: bytes) -> DmarcReport:
    """An aggregate report's XML; ReportError for a DTD or anything not a <feedback>. Read as
    a stream: each <record> is taken and dropped from the tree, so memory follows the rows
    kept, not the size of the document."""
    if _DOCTYPE.search(xml):
        # No DTD: entities (billion laughs, external files) never reach the parser.
        raise ReportError("XML with a DOCTYPE or ENTITY declaration is refused")
    rows: list[DmarcRow] = []
    root: ET.Element | None = None
    depth = 0
    try:
        for event, element in ET.iterparse(io.BytesIO(xml), events=("start", "end")):
            depth += 1 if event == "start" else -1
            if root is None:
                root = element
                if _local(root.tag) != "feedback":
                    raise ReportError(f"XML root is <{_local(root.tag)}>, not <feedback>")
            elif event == "end" and depth == 1 and _local(element.tag) == "record":
                rows.append(_row(element))
                root.remove(element)  # a <record> of <feedback>: read, and dropped
    except (ET.ParseError, LookupError) as exc:  # LookupError: an unknown encoding= name
        raise ReportError(f"bad XML: {exc}") from None
    if root is None:
        raise ReportError("bad XML: no element")
    return DmarcReport(
        org_name=_text(root, "report_metadata", "org_name"),
        report_id=_text(root, "report_metadata", "report_id"),
        begin=_int(_text(root, "report_metadata", "date_range", "begin")),
        end=_int(_text(root, "report_metadata", "date_range", "end")),
        policy_domain=_text(root, "policy_published", "domain").lower(),
        policy=_text(root, "policy_published", "p"),
        rows=tuple(rows),
    )


def _row(record: ET.Element) -> DmarcRow:
    results = _child(record, "auth_results")
    dkim = tuple(
        (_text(r, "domain"), _text(r, "result")) for r in results or () if _local(r.tag) == "dkim"
    )
    spf = tuple(
        (_text(r, "domain"), _text(r, "result")) for r in results or () if _local(r.tag) == "spf"
    )
    return DmarcRow(
        source_ip=_text(record, "row", "source_ip"),
        count=_int(_text(record, "row", "count")),
        disposition=_text(record, "row", "policy_evaluated", "disposition"),
        dkim=_text(record, "row", "policy_evaluated", "dkim"),
        spf=_text(record, "row", "policy_evaluated", "spf"),
        header_from=_text(record, "identifiers", "header_from").lower(),
        envelope_from=_text(record, "identifiers", "envelope_from").lower(),
        dkim_results=dkim,
        spf_results=spf,
    )


# -- TLS-RPT (RFC 8460 §4) --------------------------------------------------------------------


def _get(obj: Any, key: str, kind: type) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, kind) else kind()


def parse_tlsrpt(data: bytes) -> TlsReport:
    try:
        report = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReportError(f"bad JSON: {exc}") from None
    if not isinstance(report, dict) or "policies" not in report:
        raise ReportError("JSON without the RFC 8460 policies field")
    dates = _get(report, "date-range", dict)
    policies = []
    for item in _get(report, "policies", list):
        policy = _get(item, "policy", dict)
        summary = _get(item, "summary", dict)
        failures = tuple(
            (
                str(_get(d, "result-type", str)),
                str(_get(d, "receiving-mx-hostname", str)),
                str(_get(d, "receiving-ip", str)),
                int(_get(d, "failed-session-count", int)),
            )
            for d in _get(item, "failure-details", list)
        )
        policies.append(
            TlsPolicyResult(
                policy_type=str(_get(policy, "policy-type", str)),
                policy_domain=str(_get(policy, "policy-domain", str)).lower(),
                successful=int(_get(summary, "total-successful-session-count", int)),
                failed=int(_get(summary, "total-failure-session-count", int)),
                failures=failures,
            )
        )
    return TlsReport(
        org_name=str(_get(report, "organization-name", str)),
        report_id=str(_get(report, "report-id", str)),
        begin=str(_get(dates, "start-datetime", str)),
        end=str(_get(dates, "end-datetime", str)),
        policies=tuple(policies),
    )
