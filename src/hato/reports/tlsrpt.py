"""The SMTP TLS report (RFC 8460 §4): one JSON document per policy domain and interval.

Theory of operation: the store's events of one policy domain are grouped by policy (type and
strings, RFC 8460 §4.3); each policy gets its summary (successful and failed session counts,
§4.4) and its failure details, one per result-type, MX host and receiving IP with their count
(§4.3). Dates are RFC 3339 in UTC (§4.4 date-range).

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from hato.reports.records import TlsEvent


def rfc3339(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tlsrpt_json(
    *,
    org_name: str,
    contact: str,
    report_id: str,
    policy_domain: str,
    events: Sequence[TlsEvent],
    begin: int,
    end: int,
) -> bytes:
    """RFC 8460 §4.4 report for `events` (all of `policy_domain`)."""
    policies: dict[tuple[str, tuple[str, ...]], list[TlsEvent]] = {}
    for event in events:
        policies.setdefault((event.policy_type.value, event.policy_strings), []).append(event)
    report: dict[str, Any] = {
        "organization-name": org_name,
        "date-range": {"start-datetime": rfc3339(begin), "end-datetime": rfc3339(end)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": [
            _policy(kind, strings, policy_domain, group)
            for (kind, strings), group in policies.items()
        ],
    }
    return json.dumps(report, indent=2).encode("utf-8") + b"\n"


def _policy(
    kind: str, strings: tuple[str, ...], domain: str, events: list[TlsEvent]
) -> dict[str, Any]:
    policy: dict[str, Any] = {"policy-type": kind, "policy-domain": domain}
    if strings:
        policy["policy-string"] = list(strings)
    mx = [line.removeprefix("mx: ") for line in strings if line.startswith("mx: ")]
    if kind == "sts" and mx:
        policy["mx-host"] = mx  # RFC 8460 §4.3: the MX patterns of the MTA-STS policy
    details: dict[tuple[str, str, str, str], int] = {}
    for e in events:
        if e.failure is not None:
            key = (e.failure.value, e.mx_host, e.receiving_ip, e.detail)
            details[key] = details.get(key, 0) + e.count
    return {
        "policy": policy,
        "summary": {
            "total-successful-session-count": sum(e.count for e in events if e.failure is None),
            "total-failure-session-count": sum(e.count for e in events if e.failure is not None),
        },
        "failure-details": [_detail(*key, count) for key, count in details.items()],
    }


def _detail(result: str, mx: str, ip: str, reason: str, count: int) -> dict[str, Any]:
    detail: dict[str, Any] = {"result-type": result}
    if ip:
        detail["receiving-ip"] = ip
    if mx:
        detail["receiving-mx-hostname"] = mx
    detail["failed-session-count"] = count
    if reason:
        detail["failure-reason-code"] = reason
    return detail
