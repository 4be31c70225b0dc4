"""DSN messages as Python's `email` reads them (RFC 3464, RFC 6522), and RFC 3461 NOTIFY/ORCPT."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

import pytest
from queue_fakes import addr, parse_dsn

from hato.model import Notify, QueuedMessage, QueuedRecipient, RecipientDsn, Reply, xtext_decode
from hato.model.header import header_section
from hato.queue.dsn import (
    Action,
    Original,
    RecipientReport,
    build_dsn,
    status_code,
)
from kit.clock import T0

HOST = "mx.hato.test"
ORIGINAL = (
    b"Received: by test\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"the figures are attached\r\n"
)


def message(**kwargs: object) -> QueuedMessage:
    fields: dict[str, object] = {
        "queue_id": "01ABCDEFGHJKMN",
        "mail_from": addr("alice@example.com"),
        "received_at": T0,
        "body_path": "",
        "size": len(ORIGINAL),
        "params": {"ENVID": "QQ+2B1", "RET": "FULL"},
    }
    fields.update(kwargs)
    return QueuedMessage(**fields)  # type: ignore[arg-type]


def rcpt(text: str, row_id: int = 1, *, original: str | None = None, **dsn: str) -> QueuedRecipient:
    return QueuedRecipient(
        row_id,
        addr(text),
        addr(original or text),
        dsn=RecipientDsn.from_params({k.upper(): v for k, v in dsn.items()}),
    )


def build(reports: list[RecipientReport], original: Original | None = None, **kw: object) -> bytes:
    return build_dsn(
        kw.pop("msg", None) or message(),  # type: ignore[arg-type]
        reports,
        original or Original(ORIGINAL, False),
        hostname=HOST,
        now=T0 + 60,
        dsn_id="01DSNDSNDSNDSN",
    )


def test_a_failure_dsn_has_the_three_parts_and_the_fields_a_parser_reads() -> None:
    gone = rcpt("gone@example.org", orcpt="rfc822;Gone+2Bx@example.org")
    reply = Reply(550, "5.1.1", "<gone@example.org>: Recipient address rejected")
    data = build([RecipientReport(gone, Action.FAILED, reply, "mx.example.org", T0 + 30)])
    dsn = parse_dsn(data)
    top = dsn.report
    assert top["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert str(top["To"]) == "alice@example.com"  # the default policy shows the addr-spec
    assert top["Subject"] == "Undelivered Mail Returned to Sender"
    assert top["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert top["Message-ID"] == f"<01DSNDSNDSNDSN@{HOST}>"
    assert dsn.human.get_content_type() == "text/plain"
    text = dsn.human.get_payload()
    assert isinstance(text, str) and "<gone@example.org>: failed: 550 5.1.1" in text
    assert dsn.per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert dsn.per_message["Original-Envelope-Id"] == "QQ+1"  # decoded from xtext
    assert dsn.per_message["Arrival-Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    (block,) = dsn.recipients
    assert block["Original-Recipient"] == "rfc822;Gone+x@example.org"
    assert block["Final-Recipient"] == "rfc822;gone@example.org"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx.example.org"
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected"
    )
    assert dsn.returned.get_content_type() == "message/rfc822"
    inner = dsn.returned.get_payload()
    assert isinstance(inner, list) and isinstance(inner[0], Message)
    assert inner[0]["Subject"] == "quarterly figures"
    assert ORIGINAL in data  # returned as it was, octet for octet
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_several_recipients_are_blocks_of_one_report() -> None:
    a = rcpt("a@example.org", 1)
    b = rcpt("b@example.org", 2, original="list@example.com")
    reports = [
        RecipientReport(a, Action.FAILED, Reply(550, None, "no"), "mx.example.org"),
        RecipientReport(b, Action.FAILED, Reply(554, "5.7.1", "policy"), None),
    ]
    dsn = parse_dsn(build(reports))
    assert [r["Final-Recipient"] for r in dsn.recipients] == [
        "rfc822;a@example.org",
        "rfc822;b@example.org",
    ]
    first, second = dsn.recipients
    assert first["Status"] == "5.0.0"  # derived from the basic code (RFC 3463 §3.1)
    assert first["Original-Recipient"] is None  # no ORCPT, no alias: nothing to add
    assert second["Original-Recipient"] == "rfc822;list@example.com"  # the alias as given
    assert second["Remote-MTA"] is None  # our own verdict: no remote, no "smtp;" diagnostic
    assert second["Diagnostic-Code"] == "X-Hato; 554 5.7.1 policy"


def test_headers_only_returns_text_rfc822_headers_without_the_body() -> None:
    gone = rcpt("gone@example.org")
    data = build(
        [RecipientReport(gone, Action.FAILED, Reply(550, "5.1.1", "no"), "mx.example.org")],
        Original(header_section(ORIGINAL), True),
    )
    dsn = parse_dsn(data)
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    returned = dsn.returned.get_payload()
    assert isinstance(returned, str) and "Subject: quarterly figures" in returned
    assert b"the figures are attached" not in data


def test_delayed_and_delivered_reports() -> None:
    slow = rcpt("slow@example.org", 1, notify="DELAY")
    done = rcpt("done@example.org", 2, notify="SUCCESS")
    reports = [
        RecipientReport(slow, Action.DELAYED, Reply(451, "4.4.1", "later"), "mx.example.org"),
        RecipientReport(done, Action.DELIVERED),
    ]
    data = build_dsn(
        message(),
        reports,
        Original(header_section(ORIGINAL), True),
        hostname=HOST,
        now=T0 + 4 * 3600,
        dsn_id="01DSNDSNDSNDSN",
        expires_at=T0 + 5 * 86400,
    )
    dsn = parse_dsn(data)
    assert dsn.report["Subject"] == "Delayed Mail (still being retried)"
    delayed, delivered = dsn.recipients
    assert (delayed["Action"], delayed["Status"]) == ("delayed", "4.4.1")
    assert delayed["Will-Retry-Until"] == "Wed, 20 Jan 2027 08:00:00 +0000"
    assert (delivered["Action"], delivered["Status"]) == ("delivered", "2.0.0")
    assert delivered["Diagnostic-Code"] is None


def test_the_boundary_never_occurs_in_the_returned_message() -> None:
    sneaky = ORIGINAL + b"--01DSNDSNDSNDSN.0/report\r\n"
    data = build(
        [RecipientReport(rcpt("x@example.org"), Action.FAILED, Reply(550, None, "no"))],
        Original(sneaky, False),
    )
    dsn = parse_dsn(data)  # three parts, the original intact inside the third
    assert dsn.report.get_boundary() == "01DSNDSNDSNDSN.1/report"
    assert sneaky in data


def test_an_eight_bit_original_is_labelled_8bit_and_long_replies_are_folded() -> None:
    body = ORIGINAL.replace(b"figures are", "Zahlen für".encode())
    lines = "\n".join(f"line {i} of a long explanation from the remote side" for i in range(30))
    data = build(
        [RecipientReport(rcpt("x@example.org"), Action.FAILED, Reply(550, "5.7.1", lines), "mx")],
        Original(body, False),
    )
    assert b"Content-Transfer-Encoding: 8bit" in data
    (block,) = parse_dsn(data).recipients
    assert block["Diagnostic-Code"].startswith("smtp; 550-5.7.1 line 0 of a long")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_no_dsn_is_built_for_the_null_reverse_path() -> None:
    # RFC 5321 §4.5.5 / §6.1: no notification about a notification.
    report = RecipientReport(rcpt("x@example.org"), Action.FAILED, Reply(550, None, "no"))
    with pytest.raises(ValueError):
        build_dsn(
            message(mail_from=None),
            [report],
            Original(ORIGINAL, False),
            hostname=HOST,
            now=T0,
            dsn_id="01DSNDSNDSNDSN",
        )


@pytest.mark.parametrize(
    ("action", "reply", "expected"),
    [
        (Action.FAILED, Reply(550, "5.1.1", "x"), "5.1.1"),
        (Action.FAILED, Reply(550, "4.1.1", "class differs"), "5.0.0"),
        (Action.FAILED, Reply(554, "5.x.1", "bad"), "5.0.0"),
        (Action.DELAYED, Reply(421, None, "x"), "4.0.0"),
        (Action.DELIVERED, None, "2.0.0"),
        (Action.RELAYED, None, "2.0.0"),
    ],
)
def test_status_codes(action: Action, reply: Reply | None, expected: str) -> None:
    assert status_code(action, reply) == expected


def test_header_section() -> None:
    assert header_section(ORIGINAL).endswith(b"Message-ID: <m1@example.com>\r\n")
    assert header_section(b"\r\nbody only\r\n") == b""
    assert header_section(b"Subject: x\r\nFrom: y\r\n") == b"Subject: x\r\nFrom: y\r\n"


def test_notify_and_orcpt_from_rcpt_parameters() -> None:
    default = RecipientDsn.from_params({})
    assert default.notify is None and default.notify_param is None
    # RFC 3461 §4.1: no NOTIFY acts as FAILURE,DELAY.
    assert default.wants(Notify.FAILURE) and default.wants(Notify.DELAY)
    assert not default.wants(Notify.SUCCESS)
    never = RecipientDsn.from_params({"NOTIFY": "NEVER"})
    assert never.notify_param == "NEVER" and not any(never.wants(n) for n in Notify)
    some = RecipientDsn.from_params({"NOTIFY": "delay,success", "ORCPT": "rfc822;a+2Bb@x.org"})
    assert some.notify_param == "SUCCESS,DELAY" and not some.wants(Notify.FAILURE)
    assert some.orcpt == "rfc822;a+b@x.org"
    assert RecipientDsn.parse(some.notify_param, some.orcpt) == some  # the stored form
    assert RecipientDsn.parse(never.notify_param, None) == never
    assert xtext_decode("caf+C3+A9+2B") == "café+"


def test_a_non_ascii_recipient_gets_the_rfc_6533_global_dsn_with_its_address_intact() -> None:
    # Issue 14: "Final-Recipient: rfc822;j?rg.m?ller@..." named nobody. RFC 6533 §3, §6.
    original = ORIGINAL.replace(b"quarterly figures", "Zahlen für Jörg".encode())
    jorg = rcpt("jörg.müller@example.de", orcpt="utf-8;j\\x{F6}rg.m\\x{FC}ller@example.de")
    alias = rcpt("zoë@example.de", 2, original="équipe@example.de")
    reply = Reply(550, "5.1.1", "no such user")
    data = build(
        [
            RecipientReport(jorg, Action.FAILED, reply, "mx.example.de", T0 + 30),
            RecipientReport(alias, Action.FAILED, reply, "mx.example.de", T0 + 30),
        ],
        Original(original, False),
        msg=message(params={"SMTPUTF8": None}),
    )
    assert b"j?rg" not in data and b"m?ller" not in data and b"zo?" not in data
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "global-delivery-status"
    human, status, returned = report.iter_parts()
    assert human.get_content_charset() == "utf-8"
    assert "<jörg.müller@example.de>: failed" in human.get_content()
    assert status.get_content_type() == "message/global-delivery-status"
    text = data.decode("utf-8")
    assert "Original-Recipient: utf-8;jörg.müller@example.de\r\n" in text
    assert "Final-Recipient: utf-8;jörg.müller@example.de\r\n" in text
    assert "Original-Recipient: utf-8;équipe@example.de\r\n" in text
    assert "Final-Recipient: utf-8;zoë@example.de\r\n" in text
    assert returned.get_content_type() == "message/global"
    assert original in data  # octet for octet
    headers_only = build(
        [RecipientReport(jorg, Action.FAILED, reply, "mx.example.de")],
        Original(header_section(original), True),
        msg=message(params={"SMTPUTF8": None}),
    )
    assert b"Content-Type: message/global-headers\r\n" in headers_only


def test_an_ascii_message_keeps_the_rfc_3464_types() -> None:
    gone = rcpt("gone@example.org")
    data = build([RecipientReport(gone, Action.FAILED, Reply(550, "5.1.1", "no"), "mx")])
    assert b"report-type=delivery-status;" in data and b"message/global" not in data
    assert data.isascii()
