"""Building and sending the reports: the DMARC aggregate XML validates against RFC 7489
Appendix C, the TLS report has RFC 8460 §4.4's fields, the messages are named as RFC 7489
§7.2.1.1 / RFC 8460 §5.3 say, and a report goes only where the policy domain's rua points and
the destination agreed (RFC 7489 §7.1)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import xmlschema

from dnsserver import FakeResolver
from hato.model.dns import RdType
from hato.reports import (
    DkimAuth,
    DmarcEvent,
    PolicyPublished,
    PolicyType,
    SqliteReportStore,
    TlsEvent,
    TlsFailure,
)
from hato.reports.aggregate import Submitter, aggregate_xml
from hato.reports.rua import parse_mailto
from hato.reports.sender import ReportSender
from kit.clock import FakeClock

SCHEMA = xmlschema.XMLSchema(Path(__file__).resolve().parents[2] / "data" / "dmarc-rua-rfc7489.xsd")
NOW = 1_700_000_000.0
US = Submitter("Hato Test", "noreply-dmarc@us.test", "us.test")
CLOCK = FakeClock(NOW, 0.0)


def _event(domain: str = "sender.test", ip: str = "192.0.2.1", aligned: bool = False) -> DmarcEvent:
    return DmarcEvent(
        time=NOW - 600,
        source_ip=ip,
        header_from=domain,
        envelope_from=domain,
        spf_domain=domain,
        spf_result="pass" if aligned else "fail",
        dkim=(DkimAuth(domain, "s1", "fail"), DkimAuth("<evil>&.test", "\x01\x1b", "pass")),
        dkim_aligned=False,
        spf_aligned=aligned,
        disposition="none" if aligned else "quarantine",
        reason="" if aligned else "local_policy",
        policy=PolicyPublished(domain, "reject", "quarantine", 100, "r", "s"),
    )


def test_the_aggregate_report_validates_against_rfc_7489_appendix_c() -> None:
    events = [_event(), _event(), _event(ip="2001:db8::25", aligned=True)]
    xml = aggregate_xml(US, "sender.test", events, begin=1, end=2, report_id="r1")
    SCHEMA.validate(xml.decode())
    data: Any = SCHEMA.to_dict(xml.decode())
    rows = [r["row"] for r in data["record"]]
    assert [(r["source_ip"], r["count"]) for r in rows] == [
        ("192.0.2.1", 2),
        ("2001:0db8:0000:0000:0000:0000:0000:0025", 1),
    ]
    assert rows[0]["policy_evaluated"]["reason"][0]["type"] == "local_policy"
    assert data["policy_published"]["p"] == "reject"
    evil = data["record"][0]["auth_results"]["dkim"][1]
    assert (evil["domain"], evil["selector"]) == ("<evil>&.test", "\ufffd\ufffd")


def test_the_rua_size_suffix_and_the_scheme() -> None:
    dest = parse_mailto("mailto:dmarc@example.net!10m")
    assert dest is not None and (dest.address, dest.limit) == ("dmarc@example.net", 10 * 1024**2)
    assert parse_mailto("https://example.net/report") is None
    assert parse_mailto("mailto:not an address") is None


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def __call__(self, mail_from: str, recipient: str, message: bytes) -> str:
        self.sent.append((mail_from, recipient, message))
        return f"Q{len(self.sent)}"


def _attachment(message: bytes) -> tuple[EmailMessage, str, bytes]:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    (part,) = list(msg.iter_attachments())
    assert isinstance(part, EmailMessage)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return msg, part.get_filename() or "", gzip.decompress(payload)


def test_reports_go_to_the_rua_and_only_to_an_outsider_that_agreed(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    for domain in ("sender.test", "other.test"):
        store.record_dmarc(_event(domain))
    resolver = FakeResolver(
        {
            ("_dmarc.sender.test", RdType.TXT): [
                "v=DMARC1; p=reject; rua=mailto:agg@sender.test,mailto:rua@vendor.test,"
                "mailto:rua@stranger.test"
            ],
            ("sender.test._report._dmarc.vendor.test", RdType.TXT): ["v=DMARC1"],
            ("_dmarc.other.test", RdType.TXT): ["v=DMARC1; p=none; rua=mailto:a@other.test!1"],
        }
    )
    outbox = Outbox()
    sender = ReportSender(store, resolver, outbox, CLOCK, US)
    summary = asyncio.run(sender.send(NOW))
    assert [rcpt for _, rcpt, _ in outbox.sent] == ["agg@sender.test", "rua@vendor.test"]
    assert any("rua@stranger.test" in s and "not authorised" in s for s in summary.skipped)
    assert any("other.test" in s and "over its limit" in s for s in summary.skipped)
    msg, name, xml = _attachment(outbox.sent[0][2])
    begin = int((NOW - 600) // 3600 * 3600)  # the hour the first event was counted in
    assert name == f"us.test!sender.test!{begin}!{int(NOW)}.xml.gz"
    assert msg["Subject"].startswith("Report Domain: sender.test Submitter: us.test Report-ID: <")
    SCHEMA.validate(xml.decode())
    assert store.dmarc_events(0, NOW + 86400) == []  # reported rows are gone
    assert store.last_sent("dmarc") == NOW


def test_the_tls_report_names_the_policy_and_the_failure(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    strings = ("version: STSv1", "mode: enforce", "mx: mx.rcpt.test", "max_age: 86400")
    no_tls = TlsFailure.STARTTLS_NOT_SUPPORTED
    fail = TlsEvent(NOW - 60, "rcpt.test", PolicyType.STS, strings, "mx.rcpt.test", "192.0.2.9",
                    no_tls, "Server does not offer STARTTLS")  # fmt: skip
    store.record_tls(fail)
    store.record_tls(fail)
    store.record_tls(TlsEvent(NOW - 60, "rcpt.test", PolicyType.STS, strings, "mx.rcpt.test",
                              "192.0.2.10"))  # fmt: skip
    resolver = FakeResolver(
        {("_smtp._tls.rcpt.test", RdType.TXT): ["v=TLSRPTv1; rua=mailto:tls@rcpt.test"]}
    )
    outbox = Outbox()
    asyncio.run(ReportSender(store, resolver, outbox, CLOCK, US).send(NOW))
    ((_, rcpt, message),) = outbox.sent
    assert rcpt == "tls@rcpt.test"
    msg, name, body = _attachment(message)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert (msg["TLS-Report-Domain"], msg["TLS-Report-Submitter"]) == ("rcpt.test", "us.test")
    assert name.endswith(".json.gz") and name.startswith("us.test!rcpt.test!")
    report = json.loads(body)
    # RFC 8460 §4.4: the required top-level fields.
    assert {"organization-name", "date-range", "contact-info", "report-id", "policies"} <= set(
        report
    )
    assert report["date-range"]["end-datetime"] == "2023-11-14T22:13:20Z"
    (policy,) = report["policies"]
    assert policy["policy"]["policy-type"] == "sts"
    assert policy["policy"]["policy-string"] == list(strings)
    assert policy["policy"]["policy-domain"] == "rcpt.test"
    assert policy["policy"]["mx-host"] == ["mx.rcpt.test"]  # the policy's mx patterns
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 2,
    }
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == "starttls-not-supported"
    assert detail["receiving-mx-hostname"] == "mx.rcpt.test"
    assert detail["receiving-ip"] == "192.0.2.9" and detail["failed-session-count"] == 2


def test_a_domain_without_a_tlsrpt_record_gets_nothing(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    store.record_tls(
        TlsEvent(NOW - 60, "quiet.test", PolicyType.NONE, (), "mx.quiet.test", "192.0.2.1")
    )
    outbox = Outbox()
    summary = asyncio.run(ReportSender(store, FakeResolver(), outbox, CLOCK, US).send(NOW))
    assert outbox.sent == []
    assert any("0 TLSRPT records" in s for s in summary.skipped)
