"""What `hato report` prints of the reports read (reading.py): per reporter and policy domain,
who sends as the domain, from which addresses, passing or failing what, and what the receiver
did; per TLS policy, the sessions that worked and the failures by type. The same as JSON for
scripts (`--json`).

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter

from hato.reports.reading import DmarcReport, DmarcRow, Found, TlsReport

MAX_SOURCES = 50  # lines of sources shown per report (the rest is counted)


def _date(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M")


def render_json(found: Found) -> str:
    return json.dumps(
        {
            "dmarc": [dataclasses.asdict(r) for r in found.dmarc],
            "tlsrpt": [dataclasses.asdict(r) for r in found.tls],
            "errors": found.errors,
        },
        indent=2,
    )


def merged(reports: list[DmarcReport]) -> list[DmarcReport]:
    """One report per reporter and policy domain: the rows of all its reports summed (a
    week of daily reports read at once is one picture), the dates from first to last."""
    groups: dict[tuple[str, str], list[DmarcReport]] = {}
    for report in reports:
        groups.setdefault((report.org_name, report.policy_domain), []).append(report)
    out = []
    for group in groups.values():
        rows: dict[DmarcRow, int] = {}
        for report in group:
            for row in report.rows:
                key = dataclasses.replace(row, count=0)
                rows[key] = rows.get(key, 0) + row.count
        last = max(group, key=lambda r: r.end)
        ids = last.report_id if len(group) == 1 else f"{len(group)} reports"
        out.append(
            dataclasses.replace(
                last,
                report_id=ids,
                begin=min(r.begin for r in group),
                rows=tuple(dataclasses.replace(row, count=n) for row, n in rows.items()),
            )
        )
    return out


def _printable(line: str) -> str:
    """A report is anyone's text: no escape sequence of theirs reaches the admin's terminal."""
    return "".join(c if c.isprintable() else "\ufffd" for c in line)


def render_text(found: Found) -> str:
    lines: list[str] = []
    reports = merged(found.dmarc)
    for report in sorted(reports, key=lambda r: (r.policy_domain, r.org_name, r.begin)):
        lines.extend(_dmarc(report))
        lines.append("")
    for tls in found.tls:
        lines.extend(_tls(tls))
        lines.append("")
    for error in found.errors:
        lines.append(f"not read: {error}")
    if not lines:
        lines.append("no reports found")
    return "\n".join(_printable(line) for line in lines).rstrip("\n") + "\n"


def _dmarc(report: DmarcReport) -> list[str]:
    total = sum(r.count for r in report.rows)
    passed = sum(r.count for r in report.rows if "pass" in (r.dkim, r.spf))
    spf = sum(r.count for r in report.rows if r.spf == "pass")
    dkim = sum(r.count for r in report.rows if r.dkim == "pass")
    done = Counter[str]()
    for row in report.rows:
        done[row.disposition or "?"] += row.count
    lines = [
        f"DMARC {report.policy_domain} (p={report.policy or '?'}) reported by "
        f"{report.org_name or '?'}, {_date(report.begin)} to {_date(report.end)} UTC "
        f"[{report.report_id}]",
        f"  {total} messages: DMARC pass {passed}, fail {total - passed}; aligned SPF pass "
        f"{spf}, aligned DKIM pass {dkim}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(done.items())),
        f"  {'source':<40} {'count':>6}  {'dmarc':<5} {'spf':<4} {'dkim':<4} "
        f"{'done':<10} from / raw results",
    ]
    rows = sorted(report.rows, key=lambda r: -r.count)
    for row in rows[:MAX_SOURCES]:
        verdict = "pass" if "pass" in (row.dkim, row.spf) else "FAIL"
        raw = " ".join(f"spf:{d}={r}" for d, r in row.spf_results)
        raw += "".join(f" dkim:{d}={r}" for d, r in row.dkim_results)
        lines.append(
            f"  {row.source_ip:<40} {row.count:>6}  {verdict:<5} {row.spf:<4} {row.dkim:<4} "
            f"{row.disposition:<10} {row.header_from} {raw}".rstrip()
        )
    if len(rows) > MAX_SOURCES:
        rest = sum(r.count for r in rows[MAX_SOURCES:])
        lines.append(f"  ... {len(rows) - MAX_SOURCES} more sources, {rest} messages")
    return lines


def _tls(report: TlsReport) -> list[str]:
    lines = [
        f"TLS-RPT reported by {report.org_name or '?'}, {report.begin} to {report.end} "
        f"[{report.report_id}]"
    ]
    for policy in report.policies:
        lines.append(
            f"  {policy.policy_domain} ({policy.policy_type}): {policy.successful} successful, "
            f"{policy.failed} failed sessions"
        )
        for result, mx, ip, count in policy.failures:
            where = " ".join(x for x in (mx, ip) if x)
            lines.append(f"    {result:<28} {count:>6}  {where}".rstrip())
    return lines
