"""The Received: trace header (RFC 5321 §4.4) and its "with" keyword (RFC 3848, RFC 6531)."""

import email.utils

import pytest

from hato.intake.received import TraceInfo, received_header, rfc5322_date, with_keyword
from hato.model import Address

BASE = TraceInfo(
    helo="client.example",
    client_ip="192.0.2.7",
    hostname="mx.example.org",
    esmtp=True,
    tls=False,
    authenticated=False,
    smtputf8=False,
)


def _info(**changes: object) -> TraceInfo:
    fields = {name: getattr(BASE, name) for name in TraceInfo.__slots__}
    fields.update(changes)
    return TraceInfo(**fields)


def test_with_keywords() -> None:
    assert with_keyword(_info(esmtp=False)) == "SMTP"
    assert with_keyword(_info()) == "ESMTP"
    assert with_keyword(_info(tls=True)) == "ESMTPS"
    assert with_keyword(_info(authenticated=True)) == "ESMTPA"
    assert with_keyword(_info(tls=True, authenticated=True)) == "ESMTPSA"
    assert with_keyword(_info(smtputf8=True, tls=True)) == "UTF8SMTPS"


def test_single_recipient_is_named_and_lines_end_in_crlf() -> None:
    header = received_header(BASE, "Q1", [Address("bob", "example.org")], 0.0)
    text = header.decode()
    assert text.startswith("Received: from client.example ([192.0.2.7])\r\n")
    assert "by mx.example.org (Hato) with ESMTP id Q1\r\n" in text
    assert "\tfor <bob@example.org>; Thu, 01 Jan 1970 00:00:00 +0000\r\n" in text
    assert header.endswith(b"\r\n") and b"\n" not in header.replace(b"\r\n", b"")


def test_several_recipients_are_not_disclosed() -> None:
    rcpts = [Address("a", "example.org"), Address("b", "example.org")]
    text = received_header(BASE, "Q2", rcpts, 0.0).decode()
    assert "for <" not in text and "a@example.org" not in text


def test_hostile_helo_cannot_break_the_header() -> None:
    text = received_header(_info(helo="evil)\r\nX-Forged: yes ("), "Q3", [], 0.0).decode()
    assert "X-Forged: yes" in text  # kept as text inside the comment-free name...
    assert "\r\nX-Forged" not in text  # ...but never as a header line of its own
    assert text.count("\r\n") == 3


def test_ipv6_client_uses_address_literal_form() -> None:
    text = received_header(_info(client_ip="2001:db8::1"), "Q4", [], 0.0).decode()
    assert "([IPv6:2001:db8::1])" in text


def test_a_unicode_helo_is_written_as_its_a_label_without_smtputf8() -> None:
    # RFC 6532 §3: UTF-8 in a header only for SMTPUTF8 mail; RFC 5890: the A-label otherwise.
    plain = received_header(_info(helo="Bücher.example"), "Q4", [], 0.0)
    assert plain.isascii() and b"from xn--bcher-kva.example (" in plain
    utf8 = received_header(_info(helo="bücher.example", smtputf8=True), "Q5", [], 0.0)
    assert "from bücher.example (".encode() in utf8
    odd = received_header(_info(helo="a😀.example"), "Q6", [], 0.0)
    assert odd.isascii() and b"from a.example (" in odd


@pytest.mark.parametrize(
    "when",
    [0.0, 1764281127.0, 1764281127.4, 1764281127.9999994, 1764281127.9999996, 1764281128.5],
)
def test_the_date_is_formatdates_also_when_remembered(when: float) -> None:
    # RFC 5322 §3.3: Universal Time as "+0000", not formatdate's "-0000" (zone unknown).
    def expected(at: float) -> str:
        return email.utils.formatdate(at, localtime=False).replace("-0000", "+0000")

    assert rfc5322_date(when) == expected(when)
    assert rfc5322_date(when).endswith(" +0000")
    assert rfc5322_date(when) == expected(when)  # from the remembered second
    assert rfc5322_date(when + 3600) == expected(when + 3600)
