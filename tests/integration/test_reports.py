"""DMARC aggregate and SMTP TLS reports end to end (issue 18 item 5): the real `hato serve`
records what it sees, `hato report send --now` sends the reports through its own queue, and
`hato report` reads what was delivered.

- DMARC: a client spoofs sender.example on port 25; sender.example's DMARC record asks for
  reports at one of our domains that agreed (RFC 7489 §7.1: the _report._dmarc record) and at
  one that did not. The report lands in the first mailbox, validates against the schema of
  RFC 7489 Appendix C and counts the messages; the second mailbox gets nothing.
- TLS-RPT: mail to peer.test, whose MX does not offer STARTTLS although its DANE TLSA records
  make TLS mandatory (RFC 7672 §2.2): the failure is recorded, and the TLS report to peer.test's
  rua says `starttls-not-supported` under its `tlsa` policy (RFC 8460 §4.3).
"""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import json
import os
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
import xmlschema
from peers import maildir
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.outbound_scripted import ScriptedPeer
from peers.server import DomainSetup, MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue, hato_dns

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "dmarc-rua-rfc7489.xsd"
pytestmark = pytest.mark.integration


def _attachment(path: Path) -> tuple[EmailMessage, str, bytes]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    (part,) = list(msg.iter_attachments())
    assert isinstance(part, EmailMessage)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return msg, part.get_filename() or "", gzip.decompress(payload)


def _wait_for_report(inbox: Path, header: bytes, timeout: float = 20.0) -> list[Path]:
    """Poll (bounded) until a message with `header` is in the Maildir: other mail (a DSN)
    may come first."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in maildir.messages(inbox) if header + b":" in p.read_bytes()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class ReportingHato(HatoServer):
    """Inbound checks on, the test DNS server, [reports] enabled."""

    def __init__(self, data_dir: Path, setup: MailSetup, nameserver: str) -> None:
        super().__init__(data_dir, setup)
        self.nameserver = nameserver
        self.dkim_txt = ""

    def _config_text(self) -> str:
        text = super()._config_text().replace("inbound = false", "inbound = true")
        return text + (
            hato_dns(self.nameserver)
            + '\n[reports]\nenabled = true\norg_name = "Hato Test Receiver"\n'
        )


DMARC_ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    # Only 192.0.2.1 may send for sender.example: our loopback client fails SPF.
    "sender.example": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.sender.example": {
        "TXT": ["v=DMARC1; p=none; rua=mailto:dmarc@reports.test,mailto:dmarc@other.test"]
    },
    # RFC 7489 §7.1: reports.test agreed to receive sender.example's reports; other.test not.
    "sender.example._report._dmarc.reports.test": {"TXT": ["v=DMARC1"]},
    "strict.example": {"TXT": ["v=spf1 -all"]},
    "_dmarc.strict.example": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@reports.test"]},
    "strict.example._report._dmarc.reports.test": {"TXT": ["v=DMARC1; rua=mailto:x@y.test"]},
}


@pytest.fixture
def receiver(workdir: Path) -> Iterator[ReportingHato]:
    setup = MailSetup(
        domains=(
            DomainSetup("reports.test", users=("dmarc", "bob")),
            DomainSetup("other.test", users=("dmarc",)),
        )
    )
    with DnsTestServer(DMARC_ZONE) as dns:
        server = ReportingHato(workdir / "data", setup, dns.nameserver)
        server.start()
        # A DKIM key for reports.test, the domain of the reports' From (noreply-dmarc@ the
        # first [[domain]]): keys are loaded at start-up.
        keygen = server.hato("dkim", "keygen", "reports.test")
        assert keygen.returncode == 0, keygen.stderr
        record = keygen.stdout.splitlines()[-1]
        server.dkim_txt = "".join(record.split('"')[1::2])
        server.stop()
        server.start()
        yield server
        server.stop()


def test_a_dmarc_report_is_sent_to_the_authorised_rua_and_validates(
    receiver: ReportingHato,
) -> None:
    for n in range(3):
        with smtplib.SMTP(receiver.host, receiver.port, timeout=20) as smtp:
            body = (
                f"From: <ceo@sender.example>\r\nTo: <bob@reports.test>\r\nSubject: spoof {n}\r\n"
                f"Message-ID: <{uuid.uuid4().hex}@sender.example>\r\n\r\nPay this.\r\n"
            )
            assert smtp.sendmail("ceo@sender.example", ["bob@reports.test"], body) == {}
    assert maildir.wait_for_count(receiver.mailbox("bob", "reports.test"), 3, 20)

    sent = receiver.hato("report", "send", "--now")
    assert sent.returncode == 0, sent.stderr
    assert "sent: dmarc sender.example -> dmarc@reports.test" in sent.stdout, sent.stdout
    assert "dmarc@other.test: not authorised by sender.example._report._dmarc.other.test" in (
        sent.stdout
    )
    # Logged by the server with the uid that asked (server/control.py).
    assert receiver.wait_for_log(
        f"event=admin-report-send now=True sent=1 skipped=1 uid={os.getuid()}$"
    )

    inbox = receiver.mailbox("dmarc", "reports.test")
    (path,) = maildir.wait_for_count(inbox, 1, 20)
    msg, name, xml = _attachment(path)
    assert msg["From"] == "noreply-dmarc@reports.test"
    assert msg["Subject"].startswith("Report Domain: sender.example Submitter: reports.test")
    # Signed with reports.test's key, as the submission port signs (RFC 6376).
    assert "d=reports.test" in msg["DKIM-Signature"]
    key = receiver.dkim_txt.encode()
    assert dkim.verify(path.read_bytes(), dnsfunc=lambda name, timeout=5: key)
    assert name.startswith("reports.test!sender.example!") and name.endswith(".xml.gz")
    schema = xmlschema.XMLSchema(SCHEMA)
    schema.validate(xml.decode())
    report = schema.to_dict(xml.decode())
    assert isinstance(report, dict)
    (record,) = report["record"]
    assert record["row"]["source_ip"] == "127.0.0.1"
    assert record["row"]["count"] == 3
    assert record["row"]["policy_evaluated"] == {
        "disposition": "none",
        "dkim": "fail",
        "spf": "fail",
    }
    assert record["identifiers"]["header_from"] == "sender.example"
    assert record["auth_results"]["spf"][0]["result"] == "fail"
    assert report["report_metadata"]["org_name"] == "Hato Test Receiver"
    # RFC 7489 §7.1: the destination that did not agree gets nothing.
    assert maildir.messages(receiver.mailbox("dmarc", "other.test")) == []

    summary = receiver.hato("report", str(inbox))
    assert summary.returncode == 0, summary.stderr
    assert "DMARC sender.example (p=none) reported by Hato Test Receiver" in summary.stdout
    assert "3 messages: DMARC pass 0, fail 3" in summary.stdout
    assert "127.0.0.1" in summary.stdout

    again = receiver.hato("report", "send", "--now")  # reported rows are gone
    assert "nothing to report" in again.stdout, again.stdout


STS_POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: localhost\r\nmax_age: 86400\r\n"


def test_a_refused_spoof_is_reported_with_the_reject_disposition(receiver: ReportingHato) -> None:
    with smtplib.SMTP(receiver.host, receiver.port, timeout=20) as smtp:
        body = "From: <ceo@strict.example>\r\nTo: <bob@reports.test>\r\nSubject: x\r\n\r\nPay.\r\n"
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("ceo@strict.example", ["bob@reports.test"], body)
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    sent = receiver.hato("report", "send", "--now")
    assert "sent: dmarc strict.example -> dmarc@reports.test" in sent.stdout, sent.stdout
    (path,) = maildir.wait_for_count(receiver.mailbox("dmarc", "reports.test"), 1, 20)
    _, _, xml = _attachment(path)
    report = xmlschema.XMLSchema(SCHEMA).to_dict(xml.decode())
    assert isinstance(report, dict)
    assert report["policy_published"]["p"] == "reject"
    (record,) = report["record"]
    assert record["row"]["count"] == 1
    assert record["row"]["policy_evaluated"]["disposition"] == "reject"


class ReportCollector(ThreadingHTTPServer):
    """An https: rua (RFC 8460 §5.3.1): keeps what was POSTed, answers 201; and the MTA-STS
    policy host of peer.test (RFC 8461 §3.3): GET /.well-known/mta-sts.txt."""

    def __init__(self, ca: TestCA) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.server_cert, ca.server_key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.posts: list[tuple[str, str, bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> ReportCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(min(length, 1024 * 1024))
        assert isinstance(self.server, ReportCollector)
        self.server.posts.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(STS_POLICY)))
        self.end_headers()
        self.wfile.write(STS_POLICY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("policy", ["tlsa", "sts"])
def test_a_tls_failure_is_reported_to_the_tlsrpt_rua(
    workdir: Path, test_ca: TestCA, policy: str
) -> None:
    with ReportCollector(test_ca) as collector:
        _tls_failure_reported(workdir, test_ca, collector, policy)


def _tls_failure_reported(
    workdir: Path, test_ca: TestCA, collector: ReportCollector, policy_type: str
) -> None:
    peer_port = free_port()
    https = f"https://localhost:{collector.server_address[1]}/tlsrpt"
    zone: dict[str, dict[str, list[ZoneValue]]] = {
        "peer.test": {"MX": [(10, "localhost")]},
        "localhost": {"A": ["127.0.0.1"]},
        "_smtp._tls.peer.test": {"TXT": [f"v=TLSRPTv1; rua=mailto:alice@users.test,{https}"]},
    }
    if policy_type == "tlsa":
        # DANE-EE records: TLS is mandatory with this MX (RFC 7672 §2.2), which has none.
        tlsa = (3, 1, 1, hashlib.sha256(b"k").digest())
        zone[f"_{peer_port}._tcp.localhost"] = {"TLSA": [tlsa]}
        extra = "dane = true\n"
    else:
        # MTA-STS enforce (RFC 8461 §5): verified TLS with localhost, which has none.
        zone["_mta-sts.peer.test"] = {"TXT": ["v=STSv1; id=20261207"]}
        extra = (
            f'mta_sts_connect_to = "{LOOPBACK}:{collector.server_address[1]}"\n'
            f'mta_sts_ca_file = "{test_ca.ca_cert}"\n'
        )
    with DnsTestServer(zone) as dns:
        dns.authenticated = policy_type == "tlsa"
        config = OutboundConfig(dns.nameserver, peer_port, extra + "\n[reports]\nenabled = true\n")
        hato = OutboundHato(workdir / "data", test_ca, config)
        hato.start()
        try:
            with ScriptedPeer(LOOPBACK, peer_port) as peer:
                hato.submit(["bob@peer.test"], message("bob@peer.test", uuid.uuid4().hex))
                hato.wait_event("deferred", to="<bob@peer.test>")
                assert peer.transactions == []
            sent = hato.hato("report", "send", "--now")
            assert sent.returncode == 0, sent.stderr
            assert "sent: tlsrpt peer.test -> alice@users.test" in sent.stdout, sent.stdout
            assert f"sent: tlsrpt peer.test -> {https}" in sent.stdout, sent.stdout
            found = _wait_for_report(hato.mailbox("alice", "users.test"), b"TLS-Report-Domain")
            assert found, hato.log_text()[-3000:]
        finally:
            hato.stop()
    msg, name, body = _attachment(found[0])
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert name.endswith(".json.gz")
    report = json.loads(body)
    (policy,) = report["policies"]
    assert policy["policy"]["policy-type"] == policy_type
    if policy_type == "sts":
        assert "mode: enforce" in policy["policy"]["policy-string"]
    assert policy["summary"]["total-failure-session-count"] >= 1
    assert policy["summary"]["total-successful-session-count"] == 0
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == "starttls-not-supported"
    assert detail["receiving-mx-hostname"] == "localhost"
    assert detail["receiving-ip"] == "127.0.0.1"

    ((path, content_type, posted),) = collector.posts  # RFC 8460 §5.3.1
    assert (path, content_type) == ("/tlsrpt", "application/tlsrpt+gzip")
    assert json.loads(gzip.decompress(posted)) == report

    summary = hato.hato("report", str(found[0]))
    assert f"peer.test ({policy_type}): 0 successful" in summary.stdout, summary.stdout
    assert "starttls-not-supported" in summary.stdout
