"""Reading received reports (`hato report`): our own reports read back, reports in the forms
receivers send them (zip, gzip, plain, inside a message), and hostile input: zip and gzip
bombs stop at the size bound, XML with a DTD or entities is refused unparsed."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

from hato.cli import main
from hato.reports import DkimAuth, DmarcEvent, PolicyPublished
from hato.reports.aggregate import Submitter, aggregate_xml
from hato.reports.message import compress, dmarc_message
from hato.reports.reading import ReportError, gunzip, parse_dmarc, read_reports

US = Submitter("Example Receiver", "noreply-dmarc@receiver.test", "receiver.test")


def _xml() -> bytes:
    spoof = DmarcEvent(
        time=0.0,
        source_ip="203.0.113.66",
        header_from="ours.test",
        envelope_from="spoof.test",
        spf_domain="spoof.test",
        spf_result="pass",
        dkim=(),
        dkim_aligned=False,
        spf_aligned=False,
        disposition="reject",
        reason="",
        policy=PolicyPublished("ours.test", "reject", "reject", 100, "r", "r"),
        count=7,
    )
    good = DmarcEvent(
        time=0.0,
        source_ip="192.0.2.25",
        header_from="ours.test",
        envelope_from="ours.test",
        spf_domain="ours.test",
        spf_result="pass",
        dkim=(DkimAuth("ours.test", "s1", "pass"),),
        dkim_aligned=True,
        spf_aligned=True,
        disposition="none",
        reason="",
        policy=spoof.policy,
        count=120,
    )
    return aggregate_xml(US, "ours.test", [spoof, good], begin=1, end=86401, report_id="r-1")


def _zip(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize("wrap", ["plain", "gzip", "zip", "message"])
def test_a_report_in_every_form_receivers_send(wrap: str) -> None:
    xml = _xml()
    data = {
        "plain": xml,
        "gzip": compress(xml),
        "zip": _zip("receiver.test!ours.test!1!86401.xml", xml),
        "message": dmarc_message(
            US, "dmarc@ours.test", "ours.test", "r-1", compress(xml), begin=1, end=86401, now=0.0
        ),
    }[wrap]
    found = read_reports(data, wrap)
    assert found.errors == []
    (report,) = found.dmarc
    assert (report.org_name, report.policy_domain, report.policy) == (
        "Example Receiver",
        "ours.test",
        "reject",
    )
    assert sorted((r.source_ip, r.count, r.dkim, r.spf) for r in report.rows) == [
        ("192.0.2.25", 120, "pass", "pass"),
        ("203.0.113.66", 7, "fail", "fail"),
    ]


def test_a_gzip_bomb_stops_at_the_bound() -> None:
    bomb = gzip.compress(b"\0" * (2 * 1024 * 1024))
    with pytest.raises(ReportError, match="more than"):
        gunzip(bomb, limit=1024 * 1024)
    found = read_reports(gzip.compress(b"<" + b" " * (51 * 1024 * 1024)), "bomb.xml.gz")
    assert found.dmarc == [] and "more than" in found.errors[0]


def test_a_zip_bomb_stops_at_the_bound() -> None:
    bomb = _zip("report.xml", b"<feedback>" + b" " * (51 * 1024 * 1024))
    assert len(bomb) < 200_000
    found = read_reports(bomb, "bomb.zip")
    assert found.dmarc == [] and "more than" in found.errors[0]
    # Many members under the bound each are bounded together (not 16 x 50 MB in memory).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(8):
            archive.writestr(f"r{n}.xml", b"<feedback>" + b" " * (10 * 1024 * 1024))
    found = read_reports(buffer.getvalue(), "many.zip")
    assert found.dmarc == [] and "more than" in found.errors[0]


def test_nested_archives_stop() -> None:
    nested = gzip.compress(gzip.compress(gzip.compress(gzip.compress(_xml()))))
    found = read_reports(nested, "nested.gz")
    assert found.dmarc == [] and "nested too deep" in found.errors[0]
    assert read_reports(gzip.compress(_xml())).dmarc  # one level is what receivers send


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
        b'"&lol;&lol;&lol;&lol;">]><feedback><report_metadata><org_name>&lol2;</org_name>'
        b"</report_metadata></feedback>",
        b'<!doctype feedback SYSTEM "file:///etc/passwd"><feedback/>',
        b"<feedback><!ENTITY x 'y'></feedback>",
    ],
)
def test_xml_with_a_dtd_or_entities_is_refused_unparsed(xml: bytes) -> None:
    with pytest.raises(ReportError, match="DOCTYPE or ENTITY"):
        parse_dmarc(xml)


def test_garbage_is_named_not_raised() -> None:
    found = read_reports(b"\x00\x01binary", "junk")
    assert found.errors == ["junk: neither XML, JSON, gzip, zip nor a message"]
    assert read_reports(b"<html/>").errors == ["-: XML root is <html>, not <feedback>"]
    assert "bad JSON" in read_reports(b"{not json").errors[0]


TLSRPT = {
    "organization-name": "Sender Inc.",
    "date-range": {
        "start-datetime": "2026-12-06T00:00:00Z",
        "end-datetime": "2026-12-07T00:00:00Z",
    },
    "contact-info": "tls@sender.test",
    "report-id": "t-1",
    "policies": [
        {
            "policy": {"policy-type": "sts", "policy-domain": "ours.test"},
            "summary": {"total-successful-session-count": 50, "total-failure-session-count": 3},
            "failure-details": [
                {
                    "result-type": "certificate-expired",
                    "receiving-mx-hostname": "mx.ours.test",
                    "receiving-ip": "192.0.2.25",
                    "failed-session-count": 3,
                }
            ],
        }
    ],
}


def test_hato_report_prints_who_sends_as_us_and_the_tls_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maildir = tmp_path / "Maildir"
    for folder in ("cur", "new", "tmp"):
        (maildir / folder).mkdir(parents=True)
    (maildir / "new" / "1.report").write_bytes(
        dmarc_message(
            US, "dmarc@ours.test", "ours.test", "r-1", compress(_xml()), begin=1, end=86401, now=0.0
        )
    )
    tls = tmp_path / "tls.json.gz"
    tls.write_bytes(gzip.compress(json.dumps(TLSRPT).encode()))
    assert main(["report", str(maildir), str(tls)]) == 0
    out = capsys.readouterr().out
    assert "DMARC ours.test (p=reject) reported by Example Receiver" in out
    assert "127 messages: DMARC pass 120, fail 7" in out
    assert "203.0.113.66" in out and "FAIL" in out and "reject" in out
    assert "ours.test (sts): 50 successful, 3 failed sessions" in out
    assert "certificate-expired" in out and "mx.ours.test 192.0.2.25" in out
    assert main(["report", "--json", str(tls)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tlsrpt"][0]["policies"][0]["failed"] == 3


def test_hato_report_on_nothing_readable_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00junk")
    assert main(["report", str(junk)]) == 1
    assert "not read:" in capsys.readouterr().out


def test_hato_report_reads_a_message_on_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = dmarc_message(
        US, "dmarc@ours.test", "ours.test", "r-1", compress(_xml()), begin=1, end=86401, now=0.0
    )
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(message)))
    assert main(["report"]) == 0
    assert "DMARC ours.test (p=reject)" in capsys.readouterr().out


def test_reports_of_one_reporter_and_domain_are_summed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for day in range(3):
        (tmp_path / f"day{day}.xml").write_bytes(_xml())
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("DMARC ours.test") == 1 and "[3 reports]" in out
    assert "381 messages: DMARC pass 360, fail 21" in out


def test_escape_sequences_in_a_report_never_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # XML 1.0 refuses control characters even as &#x1b;, JSON carries them: "\u001b".
    hostile = {**TLSRPT, "organization-name": "Evil\x1b]2;pwned\x07"}
    (tmp_path / "evil.json").write_text(json.dumps(hostile))
    assert main(["report", str(tmp_path / "evil.json")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "reported by Evil\ufffd]2;pwned\ufffd" in out
