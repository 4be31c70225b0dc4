"""STARTTLS and AUTH in the SMTP server core."""

from __future__ import annotations

from typing import Any

import pytest

from hato.model import Reply
from hato.smtp import (
    PAUSED,
    AuthCancelled,
    AuthRequest,
    AuthResponse,
    LocalProtocolError,
    MailFrom,
    ProtocolError,
    StartTLSRequest,
    State,
)
from kit.smtp_core import EHLO, Driver, b64, codes, replies

PLAIN_OK = b64(b"\0alice\0secret")
PLAIN_WRONG = b64(b"\0alice\0wrong")
AUTH_SETTINGS: dict[str, Any] = {"auth_mechanisms": ("PLAIN", "LOGIN"), "auth_over_plain": True}


def test_starttls_then_ehlo_again() -> None:
    d = Driver.make(offer_starttls=True)
    out = d.run(EHLO + "STARTTLS\r\n")
    assert replies(out)[-1] == "220 2.0.0 Ready to start TLS"
    assert d.conn.tls_active and d.conn.state is State.GREETED
    assert d.conn.hello_name is None
    out = d.run("MAIL FROM:<a@b.example>\r\n" + EHLO)
    assert codes(out) == [503, 250]  # EHLO is needed again (RFC 3207 §4.2)
    assert "STARTTLS" not in out
    assert replies(d.run("STARTTLS\r\n")) == ["503 5.5.1 TLS already active"]


def test_starttls_injection_is_discarded_unanswered() -> None:
    d = Driver.make(offer_starttls=True)
    d.auto_tls = False
    d.run(EHLO)
    out = d.run("STARTTLS\r\nRSET\r\n")
    assert out == "220 2.0.0 Ready to start TLS\r\n"
    errors = d.of_type(ProtocolError)
    assert len(errors) == 1 and "pipelined after STARTTLS" in errors[0].detail
    assert d.conn.next_event() is PAUSED  # waiting for the handshake
    with pytest.raises(LocalProtocolError):
        d.conn.receive_data(b"NOOP\r\n")
    d.conn.tls_established()
    out = d.run(EHLO)
    assert codes(out) == [250]  # RSET was never answered


def test_starttls_without_injection_emits_no_error() -> None:
    d = Driver.make(offer_starttls=True)
    d.run(EHLO + "STARTTLS\r\n")
    assert not d.of_type(ProtocolError)
    assert d.of_type(StartTLSRequest) == [StartTLSRequest()]


def test_starttls_refused_by_the_app_keeps_parsing() -> None:
    d = Driver.make(offer_starttls=True)
    d.decide = lambda e: (
        Reply(454, "4.7.0", "TLS not available") if isinstance(e, StartTLSRequest) else None
    )
    out = d.run(EHLO + "STARTTLS\r\nNOOP\r\n")
    assert codes(out) == [250, 454, 250]
    assert not d.conn.tls_active


def test_starttls_not_offered_and_before_ehlo() -> None:
    d = Driver.make()
    assert replies(d.run(EHLO + "STARTTLS\r\n"))[-1] == "502 5.5.1 Command not implemented"
    d2 = Driver.make(offer_starttls=True)
    assert codes(d2.run("STARTTLS\r\n")) == [503]


def test_auth_plain_with_initial_response() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + f"AUTH PLAIN {PLAIN_OK}\r\n")
    assert replies(out)[-1] == "235 2.7.0 Authentication successful"
    assert d.conn.authenticated
    assert d.of_type(AuthRequest) == [AuthRequest("PLAIN", b"\0alice\0secret")]


def test_auth_plain_with_empty_challenge() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    assert d.run(EHLO + "AUTH plain\r\n").endswith("334 \r\n")
    assert codes(d.run(PLAIN_OK + "\r\n")) == [235]
    assert d.of_type(AuthResponse) == [AuthResponse(b"\0alice\0secret")]


def test_auth_initial_response_equals_sign_is_empty() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + "AUTH PLAIN =\r\n")
    assert d.of_type(AuthRequest) == [AuthRequest("PLAIN", b"")]
    assert codes(out)[-1] == 535


def test_auth_login_challenge_response() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + "AUTH LOGIN\r\n")
    assert out.endswith(f"334 {b64(b'Username:')}\r\n")
    assert d.run(b64(b"alice") + "\r\n") == f"334 {b64(b'Password:')}\r\n"
    assert codes(d.run(b64(b"secret") + "\r\n")) == [235]
    assert d.conn.authenticated


def test_auth_failure_and_retry() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + f"AUTH PLAIN {PLAIN_WRONG}\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert codes(out) == [250, 535, 235]


def test_auth_twice_is_503() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + f"AUTH PLAIN {PLAIN_OK}\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert replies(out)[-1] == "503 5.5.1 Already authenticated"


def test_auth_cancel_with_star() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + "AUTH LOGIN\r\n*\r\nNOOP\r\n")
    assert replies(out)[-2:] == ["501 5.0.0 Authentication cancelled", "250 2.0.0 Ok"]
    assert d.of_type(AuthCancelled) == [AuthCancelled()]
    assert not d.conn.authenticated


def test_auth_bad_base64() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + "AUTH PLAIN !!!\r\nAUTH LOGIN\r\nnot base64\r\nNOOP\r\n")
    assert replies(out)[1] == "501 5.5.2 Invalid base64 data"
    assert replies(out)[-2:] == ["501 5.5.2 Invalid base64 data", "250 2.0.0 Ok"]
    # the payload never reaches the log
    assert all("not base64" not in e.detail for e in d.of_type(ProtocolError))


def test_auth_unknown_mechanism_and_missing_mechanism() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + "AUTH CRAM-MD5\r\nAUTH\r\n")
    assert replies(out)[1:] == [
        "504 5.5.4 Unrecognized authentication type",
        "501 5.5.4 Invalid command arguments",
    ]


def test_auth_in_a_transaction_is_503() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    out = d.run(EHLO + f"MAIL FROM:<a@b.example>\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert codes(out)[-1] == 503


def test_auth_before_tls_is_refused_when_tls_is_offered_or_required() -> None:
    d = Driver.make(offer_starttls=True, auth_mechanisms=("PLAIN",))
    out = d.run(EHLO + f"AUTH PLAIN {PLAIN_OK}\r\n")
    assert replies(out)[-1] == "530 5.7.0 Must issue a STARTTLS command first"
    d2 = Driver.make(require_tls=True, offer_starttls=True, **AUTH_SETTINGS)
    out2 = d2.run(EHLO + f"AUTH PLAIN {PLAIN_OK}\r\n")
    assert replies(out2)[-1] == "530 5.7.0 Must issue a STARTTLS command first"
    assert codes(d2.run("STARTTLS\r\n")) == [220]
    assert codes(d2.run(EHLO + f"AUTH PLAIN {PLAIN_OK}\r\n")) == [250, 235]


def test_auth_not_offered() -> None:
    d = Driver.make()
    assert replies(d.run(EHLO + "AUTH PLAIN\r\n"))[-1] == "502 5.5.1 Command not implemented"


def test_auth_lines_may_be_long_up_to_max_auth_line() -> None:
    d = Driver.make(**AUTH_SETTINGS)
    big = b64(b"\0alice\0" + b"p" * 3000)  # over 512 octets, under 12288
    assert codes(d.run(EHLO + f"AUTH PLAIN {big}\r\n")) == [250, 535]
    d2 = Driver.make(max_auth_line=100, **AUTH_SETTINGS)
    out = d2.run(EHLO + "AUTH LOGIN\r\n" + "QUFB" * 40 + "\r\nNOOP\r\n")
    assert replies(out)[-2:] == ["500 5.5.6 Authentication exchange line too long", "250 2.0.0 Ok"]
    assert d2.conn.state is State.READY


def test_require_auth_then_mail_after_auth() -> None:
    d = Driver.make(require_auth=True, **AUTH_SETTINGS)
    out = d.run(
        EHLO
        + "MAIL FROM:<a@b.example>\r\n"
        + f"AUTH PLAIN {PLAIN_OK}\r\n"
        + "MAIL FROM:<a@b.example>\r\n"
    )
    assert codes(out) == [250, 530, 235, 250]


# ---- REQUIRETLS (RFC 8689) ----


def test_requiretls_is_offered_only_over_tls() -> None:
    d = Driver.make(offer_starttls=True)
    out = d.run(EHLO)
    assert "REQUIRETLS" not in out  # RFC 8689 §4.1: not on a clear-text session
    d.run("STARTTLS\r\n")
    out = d.run(EHLO)
    assert "250-REQUIRETLS" in out or "250 REQUIRETLS" in out
    off = Driver.make(tls_active=True, requiretls=False)
    assert "REQUIRETLS" not in off.run(EHLO)


def test_requiretls_parameter_over_tls_is_taken() -> None:
    d = Driver.make(tls_active=True)
    out = d.run(EHLO + "MAIL FROM:<a@b.example> REQUIRETLS\r\n")
    assert codes(out) == [250, 250]
    [mail] = d.of_type(MailFrom)
    assert mail.requiretls and mail.params == {"REQUIRETLS": None}


def test_requiretls_parameter_without_tls_is_530_5_7_10() -> None:
    d = Driver.make(offer_starttls=True)
    out = d.run(EHLO + "MAIL FROM:<a@b.example> REQUIRETLS\r\n")
    assert replies(out)[-1] == "530 5.7.10 REQUIRETLS needs a TLS session"
    assert not d.of_type(MailFrom)
    assert d.of_type(ProtocolError)[-1].detail == "REQUIRETLS without TLS"


@pytest.mark.parametrize(
    ("settings", "line", "reply"),
    [
        # RFC 8689 §2: no value.
        ({"tls_active": True}, "MAIL FROM:<a@b.example> REQUIRETLS=yes", "501 5.5.4"),
        # Not offered: RFC 5321 §4.1.1.11.
        ({"tls_active": True, "requiretls": False}, "MAIL FROM:<a@b.example> REQUIRETLS", "555"),
    ],
)
def test_requiretls_parameter_refusals(settings: dict[str, Any], line: str, reply: str) -> None:
    d = Driver.make(**settings)
    out = d.run(EHLO + line + "\r\n")
    assert replies(out)[-1].startswith(reply)


def test_mail_without_requiretls_is_not_tagged() -> None:
    d = Driver.make(tls_active=True)
    d.run(EHLO + "MAIL FROM:<a@b.example>\r\n")
    [mail] = d.of_type(MailFrom)
    assert not mail.requiretls
