"""Black-box conformance of the real `hato serve`'s submission ports and of what it writes:
STARTTLS (RFC 3207), AUTH (RFC 4954), REQUIRETLS (RFC 8689), the fields a submitted message
gets (RFC 6409 §8, RFC 5322 §3.6), the trace fields (RFC 5321 §4.4, RFC 3848, RFC 6531) and
the DSNs Hato sends (RFC 3461, RFC 3464, RFC 6522).

One server for the module: submission (587, STARTTLS) and submissions (465, implicit TLS) as
users.test's alice, bob and carol, and a transport that sends refusing.test to the server's own
port 25, which refuses it (relaying denied): a permanent failure, so a bounce. Raw sockets as
in test_conformance_smtp.py, whose reply checks these cases share.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import tempfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from peers import maildir
from peers.clients import auth_plain
from peers.conformance import READ_TIMEOUT, Reply, check_form, codes, command
from peers.net import RawSession
from peers.outbound_hato import OutboundConfig, OutboundHato
from peers.server import USER_PASSWORD
from peers.tls import TestCA

from dnsserver import DnsTestServer

ALICE = "alice@users.test"


class LoopbackRefusal(OutboundHato):
    """OutboundHato whose mail for refusing.test goes to its own port 25 (which refuses it)."""

    def _config_text(self) -> str:
        transport = (
            f'\n[[transport]]\ndomain = "refusing.test"\nrelay = "{self.host}:{self.port}"\n'
        )
        return super()._config_text() + transport


@pytest.fixture(scope="module")
def server(test_ca: TestCA) -> Iterator[OutboundHato]:
    with DnsTestServer({}) as dns, tempfile.TemporaryDirectory(prefix="hato-conf-") as tmp:
        Path(tmp).chmod(0o755)
        hato = LoopbackRefusal(Path(tmp) / "data", test_ca, OutboundConfig(dns.nameserver))
        hato.start()
        try:
            yield hato
        finally:
            hato.stop()


def plain_587(server: OutboundHato) -> RawSession:
    session = RawSession(server.host, server.submission_port, timeout=READ_TIMEOUT)
    assert session.reply()[0] == 220
    return session


def over_tls(server: OutboundHato, ca: TestCA) -> RawSession:
    """Port 465 (RFC 8314 implicit TLS), greeted and past EHLO."""
    session = RawSession(
        server.host, server.submissions_port, timeout=READ_TIMEOUT, tls=ca.client_context()
    )
    reply = session.reply()
    check_form(reply, enhanced=False)
    assert reply[0] == 220
    assert command(session, b"EHLO client.test", enhanced=False)[0] == 250
    return session


def logged_in(server: OutboundHato, ca: TestCA) -> RawSession:
    session = over_tls(server, ca)
    assert codes(auth_plain(session, ALICE)) == (235, "2.7.0")
    return session


def keywords(reply: Reply) -> set[bytes]:
    return {line[4:].split(b" ")[0] for line in reply[1][1:]}


def test_587_before_starttls_offers_no_auth_and_refuses_mail(server: OutboundHato) -> None:
    with plain_587(server) as session:
        offered = keywords(command(session, b"EHLO client.test", enhanced=False))
        # RFC 3207 §4 and RFC 4954 §4: AUTH (plain-text passwords) only once on TLS.
        assert b"STARTTLS" in offered and b"AUTH" not in offered
        # RFC 3207 §4: "530 Must issue a STARTTLS command first" (RFC 4954 §6's 538 is for a
        # mechanism that needs encryption; none is offered in clear text here).
        assert codes(command(session, b"AUTH PLAIN")) == (530, "5.7.0")
        assert codes(command(session, b"MAIL FROM:<" + ALICE.encode() + b">")) == (530, "5.7.0")
        assert codes(command(session, b"STARTTLS now")) == (501, "5.5.4")


def test_starttls_discards_pipelined_commands_and_resets(
    server: OutboundHato, test_ca: TestCA
) -> None:
    with plain_587(server) as session:
        command(session, b"EHLO client.test", enhanced=False)
        # RFC 3207 §4.2 / §6: what came after STARTTLS in the same packet is not executed.
        reply = session.command(b"STARTTLS\r\nEHLO injected.example")
        assert codes(reply) == (220, "2.0.0")
        session.start_tls(test_ca.client_context())
        # Had the EHLO run, a 250 would come; the session knows no EHLO: 503.
        assert codes(command(session, b"AUTH PLAIN")) == (503, "5.5.1")
        offered = keywords(command(session, b"EHLO client.test", enhanced=False))
        assert b"STARTTLS" not in offered and b"AUTH" in offered and b"REQUIRETLS" in offered
        assert codes(command(session, b"STARTTLS")) == (503, "5.5.1")
        assert codes(auth_plain(session, ALICE)) == (235, "2.7.0")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN_OK = b64(b"\0" + ALICE.encode() + b"\0" + USER_PASSWORD.encode())

# (id, the lines of the exchange, the expected code and enhanced code of the last reply)
AUTH_CASES: list[tuple[str, list[bytes], int, str]] = [
    # RFC 4954 §4: "*" cancels: 501.
    ("cancel", [b"AUTH PLAIN", b"*"], 501, "5.0.0"),
    # RFC 4954 §4: a response that is not base64: 501 5.5.2.
    ("bad-base64-response", [b"AUTH PLAIN", b"not base64!"], 501, "5.5.2"),
    ("bad-base64-initial", [b"AUTH PLAIN not-base64!"], 501, "5.5.2"),
    ("unknown-mechanism", [b"AUTH CRAM-MD4"], 504, "5.5.4"),
    ("no-mechanism", [b"AUTH"], 501, "5.5.4"),
    ("login", [b"AUTH LOGIN", b64(ALICE.encode()), b64(USER_PASSWORD.encode())], 235, "2.7.0"),
    ("plain-after-challenge", [b"AUTH PLAIN", PLAIN_OK], 235, "2.7.0"),
    ("lower-case-mechanism", [b"auth plain " + PLAIN_OK], 235, "2.7.0"),
    # RFC 4954 §4: after a successful AUTH, another is 503.
    ("twice", [b"AUTH PLAIN " + PLAIN_OK, b"AUTH PLAIN " + PLAIN_OK], 503, "5.5.1"),
    # RFC 4954 §6: 530 5.7.0 for MAIL before AUTH where AUTH is required.
    ("mail-before-auth", [b"MAIL FROM:<" + ALICE.encode() + b">"], 530, "5.7.0"),
]


@pytest.mark.parametrize(
    ("lines", "code", "enhanced"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES]
)
def test_auth_reply(
    server: OutboundHato, test_ca: TestCA, lines: list[bytes], code: int, enhanced: str
) -> None:
    with over_tls(server, test_ca) as session:
        for line in lines[:-1]:
            assert command(session, line)[0] in (235, 334), line
        assert codes(command(session, lines[-1])) == (code, enhanced)


def test_wrong_password_is_535(server: OutboundHato, test_ca: TestCA) -> None:
    with over_tls(server, test_ca) as session:
        wrong = b"AUTH PLAIN " + b64(b"\0" + ALICE.encode() + b"\0wrong")
        assert codes(command(session, wrong)) == (535, "5.7.8")  # RFC 4954 §6


MAIL = b"MAIL FROM:<" + ALICE.encode() + b">"

MAIL_CASES: list[tuple[str, bytes, int, str]] = [
    # RFC 4954 §5: AUTH=<> and AUTH=xtext are taken; bad xtext is a syntax error.
    ("auth-empty", MAIL + b" AUTH=<>", 250, "2.1.0"),
    ("auth-xtext", MAIL + b" AUTH=alice+40users.test", 250, "2.1.0"),
    ("auth-bad-xtext", MAIL + b" AUTH=alice+4", 501, "5.5.4"),
    # RFC 8689 §4.1: REQUIRETLS on a TLS session.
    ("requiretls", MAIL + b" REQUIRETLS", 250, "2.1.0"),
    ("requiretls-value", MAIL + b" REQUIRETLS=yes", 501, "5.5.4"),
    # RFC 5321 §4.5.3.1.4 with RFC 3461 §4.4 and RFC 4954 §5: the parameters lengthen MAIL.
    (
        "long-parameters",
        MAIL + b" ENVID=" + b"e" * 100 + b" RET=HDRS SIZE=100 BODY=8BITMIME AUTH=" + b"a" * 480,
        250,
        "2.1.0",
    ),
]


@pytest.mark.parametrize(
    ("line", "code", "enhanced"), [c[1:] for c in MAIL_CASES], ids=[c[0] for c in MAIL_CASES]
)
def test_mail_parameter_reply(
    server: OutboundHato, test_ca: TestCA, line: bytes, code: int, enhanced: str
) -> None:
    with logged_in(server, test_ca) as session:
        assert codes(command(session, line)) == (code, enhanced)


def submit(session: RawSession, rcpt: bytes, message: bytes, mail: bytes = MAIL) -> str:
    """A transaction on a logged-in session; the 250's queue id."""
    assert codes(command(session, mail))[0] == 250
    assert codes(command(session, b"RCPT TO:<" + rcpt + b">"))[0] == 250
    assert command(session, b"DATA")[0] == 354
    code, lines = command(session, message + b".")
    assert code == 250, lines
    return lines[-1].split(b" ")[-1].decode()


def headers_of(marker: str, extra: str = "") -> bytes:
    return (
        (
            f"From: <{ALICE}>\r\nTo: <bob@users.test>\r\nSubject: conformance {marker}\r\n{extra}"
        ).encode()
        + maildir.MARKER_HEADER
        + f": {marker}\r\n\r\nHello.\r\n".encode()
    )


def bob_got(server: OutboundHato, marker: str) -> EmailMessage:
    found = maildir.wait_for_marker(server.mailbox("bob", "users.test"), marker, READ_TIMEOUT)
    assert len(found) == 1, found
    parsed = email.message_from_bytes(found[0].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_submission_adds_date_and_message_id_when_missing(
    server: OutboundHato, test_ca: TestCA
) -> None:
    with logged_in(server, test_ca) as session:
        submit(session, b"bob@users.test", headers_of("no-date"))
        given = "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <given@users.test>\r\n"
        submit(session, b"bob@users.test", headers_of("with-date", given))
    # RFC 6409 §8.2 (Date), §8.3 (Message-ID); RFC 5322 §3.6: one of each.
    added = bob_got(server, "no-date")
    assert len(added.get_all("Date") or []) == 1 and len(added.get_all("Message-ID") or []) == 1
    assert re.fullmatch(r"<[0-9a-f]+@hato\.test>", str(added["Message-ID"])), added["Message-ID"]
    assert added["Date"].datetime is not None  # RFC 5322 §3.3 syntax, parsed
    kept = bob_got(server, "with-date")
    assert kept.get_all("Date") == ["Thu, 01 Jan 2026 00:00:00 +0000"]
    assert kept.get_all("Message-ID") == ["<given@users.test>"]


@pytest.mark.parametrize(
    ("mail", "keyword"),
    [(MAIL, "ESMTPSA"), (MAIL + b" SMTPUTF8", "UTF8SMTPSA")],
    ids=["esmtpsa", "utf8smtpsa"],
)
def test_received_names_the_protocol(
    server: OutboundHato, test_ca: TestCA, mail: bytes, keyword: str
) -> None:
    marker = f"with-{keyword.lower()}"
    with logged_in(server, test_ca) as session:
        queue_id = submit(session, b"bob@users.test", headers_of(marker), mail)
    got = bob_got(server, marker)
    # RFC 5321 §4.4: Return-Path first; RFC 3848 §2 / RFC 6531 §4.3: the "with" keyword.
    assert got.keys()[0] == "Return-Path" and got["Return-Path"] == f"<{ALICE}>"
    received = " ".join(str(got["Received"]).split())
    assert f"by hato.test (Hato) with {keyword} id {queue_id} for <bob@users.test>;" in received
    assert received.endswith("+0000"), received  # RFC 5322 §3.3


def wait_report(server: OutboundHato, marker: str) -> EmailMessage:
    """The DSN in alice's Maildir that returns the message with `marker`."""
    box = server.mailbox("alice", "users.test")
    data = maildir.wait_for_report(box, READ_TIMEOUT, marker.encode())
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def status_fields(report: EmailMessage) -> list[dict[str, str]]:
    """The message/delivery-status part as its field groups (RFC 3464 §2.1: the per-message
    fields, then one group per recipient), names lower-case."""
    part = [p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status"]
    assert len(part) == 1
    groups: list[dict[str, str]] = []
    for sub in part[0].iter_parts():
        groups.append({k.lower(): " ".join(str(v).split()) for k, v in sub.items()})
    return groups


def check_report_shape(report: EmailMessage, returned: str) -> None:
    # RFC 6522 §3: multipart/report; report-type=delivery-status, three parts in order.
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    kinds = [p.get_content_type() for p in report.iter_parts()]
    assert kinds == ["text/plain", "message/delivery-status", returned]
    # RFC 3464 §2 / RFC 5321 §4.5.5: sent from the null reverse-path; RFC 3834 §5.
    assert report["Return-Path"] == "<>"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["Date"].datetime is not None and report["Message-ID"]


def test_success_dsn_with_envid_orcpt_and_ret_hdrs(server: OutboundHato, test_ca: TestCA) -> None:
    with logged_in(server, test_ca) as session:
        mail = MAIL + b" RET=HDRS ENVID=env+2Bid+3D7"
        assert codes(command(session, mail))[0] == 250
        rcpt = b"RCPT TO:<bob@users.test> NOTIFY=SUCCESS ORCPT=rfc822;Bob+2Bx@users.test"
        assert codes(command(session, rcpt))[0] == 250
        command(session, b"DATA")
        body = headers_of("dsn-success").replace(b"Hello.", b"secret body")
        assert command(session, body + b".")[0] == 250
    report = wait_report(server, "dsn-success")
    check_report_shape(report, "text/rfc822-headers")  # RFC 3461 §4.3 RET=HDRS
    assert b"secret body" not in report.as_bytes()
    per_message, per_recipient = status_fields(report)
    # RFC 3464 §2.2: Reporting-MTA; ENVID xtext-decoded (RFC 3461 §4.4); Arrival-Date.
    assert per_message["reporting-mta"] == "dns; hato.test"
    assert per_message["original-envelope-id"] == "env+id=7"
    assert "arrival-date" in per_message
    # RFC 3464 §2.3: ORCPT decoded, Final-Recipient, Action, Status.
    assert per_recipient["original-recipient"] == "rfc822;Bob+x@users.test"
    assert per_recipient["final-recipient"] == "rfc822;bob@users.test"
    assert per_recipient["action"] == "delivered"
    assert per_recipient["status"] == "2.0.0"


def test_failure_dsn_returns_the_message(server: OutboundHato, test_ca: TestCA) -> None:
    with logged_in(server, test_ca) as session:
        submit(session, b"nobody@refusing.test", headers_of("dsn-failure"))
    report = wait_report(server, "dsn-failure")
    check_report_shape(report, "message/rfc822")  # RFC 3461 §4.3: RET=FULL by default
    assert b"Hello." in report.as_bytes()
    per_message, per_recipient = status_fields(report)
    assert per_message["reporting-mta"] == "dns; hato.test"
    assert "original-envelope-id" not in per_message and "original-recipient" not in per_recipient
    assert per_recipient["final-recipient"] == "rfc822;nobody@refusing.test"
    assert per_recipient["action"] == "failed"
    # RFC 3464 §2.3.4: the status; the next hop is this very server (its greeting names
    # hato.test), so the attempt is a loop: RFC 3463 X.4.6, RFC 5321 §5.1.
    assert per_recipient["status"] == "5.4.6", per_recipient
    assert "last-attempt-date" in per_recipient
