"""The SMTP server core's commands: verbs, replies, sequencing, parameters, limits."""

from __future__ import annotations

import pytest

from hato.model import Address, Reply
from hato.smtp import (
    NEED_DATA,
    PAUSED,
    CloseConnection,
    ConnectionLost,
    Hello,
    LocalProtocolError,
    MailFrom,
    ProtocolError,
    RcptTo,
    ServerConnection,
    ServerSettings,
    State,
    TransactionReset,
)
from kit.smtp_core import EHLO, TXN, Driver, codes, replies


def test_greeting_banner() -> None:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.greet()
    assert conn.data_to_send() == b"220 mx.example.org ESMTP Hato\r\n"
    assert conn.state is State.GREETED


def test_nothing_is_parsed_before_greet_but_early_input_is_parsed_after() -> None:
    d = Driver.make(greet=False)
    assert d.run("NOOP\r\n") == ""
    assert d.conn.state is State.INITIAL
    d.conn.greet()
    d.pump()
    assert replies(d.conn.data_to_send().decode()) == [
        "220 mx.example.org ESMTP Hato",
        "250 2.0.0 Ok",
    ]


def test_reject_mode_answers_503_to_everything_but_quit() -> None:
    d = Driver.make(greet=False)
    d.conn.greet(Reply(554, "5.3.2", "No service"))
    assert d.conn.data_to_send() == b"554 5.3.2 No service\r\n"
    out = d.run("EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nFOO\r\nQUIT\r\n")
    assert replies(out) == ["503 5.5.1 No service here, only QUIT"] * 3 + ["221 2.0.0 Bye"]
    assert isinstance(d.events[-1], CloseConnection)


def test_greet_421_closes_and_greet_twice_is_our_error() -> None:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.greet(Reply(421, "4.3.2", "Busy"))
    assert isinstance(conn.next_event(), CloseConnection)
    with pytest.raises(LocalProtocolError):
        conn.greet()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")


def test_ehlo_lists_capabilities_without_enhanced_codes() -> None:
    d = Driver.make()
    out = d.run(EHLO)
    assert out.split("\r\n")[:-1] == [
        "250-mx.example.org",
        "250-PIPELINING",
        "250-SIZE 52428800",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250 CHUNKING",
    ]
    assert d.conn.esmtp and d.conn.hello_name == "client.example.com"
    assert d.of_type(Hello) == [Hello("EHLO", "client.example.com")]


def test_ehlo_optional_capabilities() -> None:
    d = Driver.make(
        max_message_size=1000,
        smtputf8=False,
        chunking=False,
        dsn=True,
        offer_starttls=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_over_plain=True,
    )
    lines = d.run(EHLO).split("\r\n")[1:-1]
    assert [line[4:] for line in lines] == [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    ]


def test_auth_is_not_advertised_on_plain_text_by_default() -> None:
    d = Driver.make(offer_starttls=True, auth_mechanisms=("PLAIN",))
    assert "AUTH" not in d.run(EHLO)
    d2 = Driver.make(tls_active=True, offer_starttls=True, auth_mechanisms=("PLAIN",))
    out = d2.run(EHLO)
    assert "250 AUTH PLAIN" in out and "STARTTLS" not in out


def test_helo_is_one_line_and_not_esmtp() -> None:
    d = Driver.make()
    assert d.run("HELO client.example.com\r\n") == "250 mx.example.org\r\n"
    assert not d.conn.esmtp
    assert d.conn.state is State.READY


def test_accept_text_on_hello() -> None:
    d = Driver.make()
    d.decide = lambda e: "greets you" if isinstance(e, Hello) else None
    assert d.run("HELO c.example\r\n") == "250 mx.example.org greets you\r\n"


@pytest.mark.parametrize(
    "line", ["EHLO", "EHLO ", "HELO", "EHLO a b", "EHLO -bad-.example", "EHLO [1.2.3]"]
)
def test_hello_needs_a_domain_or_literal(line: str) -> None:
    d = Driver.make()
    out = d.run(line + "\r\n")
    assert codes(out) == [501]
    assert out.startswith("501 5.5.4")
    assert d.conn.state is State.GREETED


@pytest.mark.parametrize("name", ["[192.0.2.1]", "[IPv6:2001:db8::1]", "x.example", "localhost"])
def test_hello_accepts_domains_and_literals(name: str) -> None:
    d = Driver.make()
    assert codes(d.run(f"EHLO {name}\r\n")) == [250]


def test_verbs_are_case_insensitive() -> None:
    d = Driver.make()
    out = d.run("ehlo c.example\r\nmail from:<a@b.example>\r\nRcPt To:<x@example.org>\r\nnoop\r\n")
    assert codes(out) == [250, 250, 250, 250]


def test_unknown_verb_is_500_and_a_protocol_error() -> None:
    d = Driver.make()
    assert replies(d.run("FOO bar\r\n")) == ["500 5.5.1 Command unrecognized"]
    assert d.of_type(ProtocolError)[0].reply.code == 500


def test_simple_verbs() -> None:
    d = Driver.make()
    out = d.run(EHLO + "NOOP\r\nNOOP anything\r\nHELP\r\nVRFY bob\r\nVRFY\r\nEXPN list\r\nRSET\r\n")
    assert replies(out)[1:] == [
        "250 2.0.0 Ok",
        "250 2.0.0 Ok",
        "214 2.0.0 Hato SMTP server: see RFC 5321",
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        "501 5.5.4 Invalid command arguments",
        "252 2.5.0 Cannot EXPN list, but will accept message and attempt delivery",
        "250 2.0.0 Ok",
    ]


@pytest.mark.parametrize("verb", ["RSET", "QUIT", "DATA", "STARTTLS"])
def test_verbs_without_arguments_refuse_them(verb: str) -> None:
    d = Driver.make(offer_starttls=True)
    txn = "" if verb == "STARTTLS" else TXN  # STARTTLS is refused in a transaction
    out = d.run(EHLO + txn + f"{verb} now\r\n")
    assert replies(out)[-1] == "501 5.5.4 Invalid command arguments"
    assert not d.closed


def test_quit() -> None:
    d = Driver.make()
    assert d.run("QUIT\r\nNOOP\r\n") == "221 2.0.0 Bye\r\n"
    assert isinstance(d.events[-1], CloseConnection)
    assert d.conn.state is State.CLOSED
    assert d.conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        d.conn.receive_data(b"NOOP\r\n")


def test_eof_gives_connection_lost_and_no_reply() -> None:
    d = Driver.make()
    d.run(EHLO + "MAIL FROM:<a@b.example>\r\nNOO")
    assert d.eof() == ""
    assert isinstance(d.events[-1], ConnectionLost)
    with pytest.raises(LocalProtocolError):
        d.conn.receive_data(b"x")


def test_eof_before_greeting() -> None:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionLost)


def test_mail_needs_hello() -> None:
    d = Driver.make()
    assert replies(d.run("MAIL FROM:<a@b.example>\r\n")) == ["503 5.5.1 Bad sequence of commands"]


def test_mail_and_rcpt_happy_path() -> None:
    d = Driver.make()
    assert replies(d.run(EHLO + TXN))[1:] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert d.of_type(MailFrom)[0].path == Address("alice", "example.com")
    assert d.of_type(RcptTo)[0].address == Address("bob", "example.org")
    assert d.conn.state is State.RCPT


def test_nested_mail_and_rcpt_without_mail() -> None:
    d = Driver.make()
    out = d.run(EHLO + "RCPT TO:<b@example.org>\r\n" + TXN + "MAIL FROM:<c@d.example>\r\n")
    assert codes(out) == [250, 503, 250, 250, 503]


def test_null_reverse_path_in_mail_only() -> None:
    d = Driver.make()
    out = d.run(EHLO + "MAIL FROM:<>\r\nRCPT TO:<>\r\n")
    assert codes(out) == [250, 250, 501]
    assert d.of_type(MailFrom)[0].path is None
    assert replies(out)[-1].startswith("501 5.1.3")


def test_one_space_after_the_colon_is_accepted() -> None:
    d = Driver.make()
    out = d.run(EHLO + "MAIL FROM: <a@b.example>\r\nRCPT TO: <x@example.org>\r\n")
    assert codes(out) == [250, 250, 250]


@pytest.mark.parametrize(
    "line,reply",
    [
        ("MAIL FROM:a@b.example", "501 5.1.7"),
        ("MAIL FROM:<a@>", "501 5.1.7"),
        ("MAIL FROM:<a b@c.example>", "501 5.1.7"),
        ("MAIL FROM:<a@b.example>junk", "501 5.1.7"),
        ("MAIL TO:<a@b.example>", "501 5.5.4"),
        ("MAIL", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE=ten", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> BODY=BINARYMIME", "555 5.5.4"),
        ("MAIL FROM:<a@b.example> BODY=9BIT", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<a@b.example> RET=FULL", "555 5.5.4"),  # DSN off
        ("MAIL FROM:<a@b.example> SMTPUTF8=yes", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE=99999999999", "552 5.3.4"),
        ("MAIL FROM:<ü@b.example>", "553 5.6.7"),
    ],
)
def test_mail_refusals(line: str, reply: str) -> None:
    d = Driver.make()
    out = d.run(EHLO + line + "\r\n")
    assert replies(out)[-1].startswith(reply)
    assert d.conn.state is State.READY


def test_mail_parameters_are_parsed() -> None:
    d = Driver.make(dsn=True)
    line = "MAIL FROM:<ü@b.example> SIZE=100 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=a+2Bb\r\n"
    assert codes(d.run(EHLO + line)) == [250, 250]
    mail = d.of_type(MailFrom)[0]
    assert (mail.size, mail.body, mail.smtputf8) == (100, "8BITMIME", True)
    assert mail.params == {
        "SIZE": "100",
        "BODY": "8bitmime",
        "SMTPUTF8": None,
        "RET": "HDRS",
        "ENVID": "a+2Bb",
    }


def test_smtputf8_off_refuses_the_parameter() -> None:
    d = Driver.make(smtputf8=False)
    out = d.run(EHLO + "MAIL FROM:<a@b.example> SMTPUTF8\r\n")
    assert replies(out)[-1].startswith("555 5.5.4")


def test_non_ascii_recipient_needs_smtputf8_transaction() -> None:
    d = Driver.make()
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\nRCPT TO:<ü@example.org>\r\n")
    assert replies(out)[-1].startswith("553 5.6.7")
    d2 = Driver.make()
    out2 = d2.run(EHLO + "MAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<ü@example.org>\r\n")
    assert codes(out2) == [250, 250, 250]


def test_source_route_is_accepted_and_ignored() -> None:
    d = Driver.make()
    assert codes(d.run(EHLO + "MAIL FROM:<@relay.example:a@b.example>\r\n")) == [250, 250]
    assert d.of_type(MailFrom)[0].path == Address("a", "b.example")


def test_quoted_local_part_with_angle_bracket() -> None:
    d = Driver.make()
    assert codes(d.run(EHLO + 'MAIL FROM:<"a>b"@c.example> SIZE=1\r\n')) == [250, 250]
    assert d.of_type(MailFrom)[0].path == Address("a>b", "c.example")


@pytest.mark.parametrize("path", ["<postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_postmaster_without_domain(path: str) -> None:
    d = Driver.make()
    d.decide = lambda e: "Ok" if isinstance(e, RcptTo) else None
    out = d.run(EHLO + f"MAIL FROM:<>\r\nRCPT TO:{path}\r\n")
    assert codes(out) == [250, 250, 250]
    assert d.of_type(RcptTo)[0].address == Address("postmaster", "mx.example.org")


@pytest.mark.parametrize(
    "params,ok",
    [
        ("NOTIFY=NEVER", True),
        ("NOTIFY=SUCCESS,FAILURE,DELAY", True),
        ("NOTIFY=failure", True),
        ("NOTIFY=NEVER,SUCCESS", False),
        ("NOTIFY=SUCCESS,SUCCESS", False),
        ("NOTIFY", False),
        ("ORCPT=rfc822;bob+40example.org", True),
        ("ORCPT=rfc822", False),
        ("ORCPT=rfc822;a+zz", False),
    ],
)
def test_dsn_rcpt_parameters(params: str, ok: bool) -> None:
    d = Driver.make(dsn=True)
    out = d.run(EHLO + f"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org> {params}\r\n")
    assert replies(out)[-1].startswith("250 2.1.5" if ok else "501 5.5.4")


@pytest.mark.parametrize(
    "mail_params,orcpt,ok",
    [
        # RFC 6533 §3: utf-8-addr-unitext (UTF-8 kept, "+" "=" "\\" as \\x{HEX}) with SMTPUTF8.
        (" SMTPUTF8", "utf-8;jörg.müller@example.org", True),
        (" SMTPUTF8", "utf-8;j\\x{F6}rg\\x{2B}1@example.org", True),
        (" SMTPUTF8", "utf-8;jörg\\müller@example.org", False),
        (" SMTPUTF8", "utf-8;jörg+müller@example.org", False),
        (" SMTPUTF8", "rfc822;jörg@example.org", False),
        # Without SMTPUTF8 only the 7-bit utf-8-addr-xtext form.
        ("", "utf-8;j\\x{F6}rg@example.org", True),
        ("", "utf-8;jörg@example.org", False),
    ],
)
def test_utf8_orcpt(mail_params: str, orcpt: str, ok: bool) -> None:
    d = Driver.make(dsn=True, smtputf8=True)
    out = d.run(
        EHLO + f"MAIL FROM:<a@b.example>{mail_params}\r\nRCPT TO:<x@example.org> ORCPT={orcpt}\r\n"
    )
    assert replies(out)[-1].startswith("250 2.1.5" if ok else "501 5.5.4"), replies(out)


def test_rcpt_parameters_without_dsn_are_555() -> None:
    d = Driver.make()
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org> NOTIFY=NEVER\r\n")
    assert replies(out)[-1].startswith("555 5.5.4")


def test_auth_parameter_on_mail_when_auth_is_offered() -> None:
    d = Driver.make(auth_mechanisms=("PLAIN",), auth_over_plain=True)
    assert codes(d.run(EHLO + "MAIL FROM:<a@b.example> AUTH=<>\r\n")) == [250, 250]
    d2 = Driver.make()
    assert codes(d2.run(EHLO + "MAIL FROM:<a@b.example> AUTH=<>\r\n")) == [250, 555]


def test_refused_recipients_then_data_gets_554() -> None:
    d = Driver.make()
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
    assert replies(out)[1:] == [
        "250 2.1.0 Ok",
        "550 5.1.1 No such user",
        "554 5.5.1 No valid recipients",
    ]


def test_data_without_rcpt_is_503() -> None:
    d = Driver.make()
    out = d.run(EHLO + "DATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n")
    assert codes(out) == [250, 503, 250, 503]


def test_recipient_limit_452_without_asking_the_app() -> None:
    d = Driver.make()
    rcpts = "".join(f"RCPT TO:<u{i}@example.org>\r\n" for i in range(101))
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\n" + rcpts)
    assert codes(out) == [250, 250] + [250] * 100 + [452]
    assert replies(out)[-1] == "452 4.5.3 Too many recipients"
    assert len(d.of_type(RcptTo)) == 100
    assert not d.of_type(ProtocolError)


def test_refused_recipients_do_not_count_against_the_limit() -> None:
    d = Driver.make(max_recipients=2)
    out = d.run(
        EHLO + "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@other.example>\r\n"
        "RCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n"
    )
    assert codes(out) == [250, 250, 550, 250, 250, 452]


BAD_RCPT = "RCPT TO:<x@other.example>\r\n"


def test_refused_recipients_close_the_session_at_the_limit() -> None:
    # Each refused RCPT is a look-up and a log line: a stranger guessing addresses gets
    # max_refused_recipients of them per connection (RFC 5321 §3.8: 421 closes), across RSETs.
    d = Driver.make(max_refused_recipients=3)
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\n" + BAD_RCPT * 2 + "RSET\r\n"
                + "MAIL FROM:<a@b.example>\r\n" + BAD_RCPT * 2 + "NOOP\r\n")  # fmt: skip
    assert codes(out) == [250, 250, 550, 550, 250, 250, 550, 421]
    assert replies(out)[-1] == "421 4.7.0 Too many refused recipients, closing connection"
    assert len(d.of_type(RcptTo)) == 3
    assert isinstance(d.events[-1], CloseConnection)


def test_an_accepted_message_starts_the_refused_count_again() -> None:
    d = Driver.make(max_refused_recipients=3)
    message = "MAIL FROM:<a@b.example>\r\n" + BAD_RCPT * 2 + "RCPT TO:<a@example.org>\r\n"
    out = d.run(EHLO + (message + "DATA\r\nhi\r\n.\r\n") * 2 + "NOOP\r\n")
    assert codes(out) == [250] + [250, 550, 550, 250, 354, 250] * 2 + [250]
    assert not d.closed


def test_rset_and_new_ehlo_reset_the_transaction() -> None:
    d = Driver.make()
    out = d.run(EHLO + TXN + "RSET\r\nRCPT TO:<b@example.org>\r\n" + TXN + EHLO + "DATA\r\n")
    assert codes(out) == [250, 250, 250, 250, 503, 250, 250, 250, 503]
    assert len(d.of_type(TransactionReset)) == 2
    assert d.conn.state is State.READY


def test_rset_without_transaction_emits_no_reset() -> None:
    d = Driver.make()
    d.run(EHLO + "RSET\r\n")
    assert not d.of_type(TransactionReset)


def test_require_tls_refuses_mail() -> None:
    d = Driver.make(require_tls=True, offer_starttls=True)
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\n")
    assert replies(out)[-1] == "530 5.7.0 Must issue a STARTTLS command first"


def test_require_auth_refuses_mail() -> None:
    d = Driver.make(require_auth=True)
    out = d.run(EHLO + "MAIL FROM:<a@b.example>\r\n")
    assert replies(out)[-1] == "530 5.7.0 Authentication required"


def test_command_line_too_long_is_skipped_without_buffering() -> None:
    d = Driver.make()
    out = d.run(EHLO + "NOOP " + "x" * 600)
    assert replies(out)[-1] == "500 5.5.2 Line too long"
    for _ in range(20):
        assert d.run("y" * 5000) == ""
        # the rest of the line is consumed as it comes, not kept
        assert len(d.conn._buf) - d.conn._pos <= 1
    out = d.run("z\r\nNOOP\r\n")
    assert replies(out) == ["250 2.0.0 Ok"]


def test_command_line_limit_includes_crlf() -> None:
    # "NOOP 12345\r\n" is 12 octets: allowed; 13 is too long
    d = Driver.make(max_command_line=12)
    assert codes(d.run("NOOP 12345\r\nNOOP 123456\r\nNOOP\r\n")) == [250, 500, 250]


def test_too_many_errors_close_with_421() -> None:
    d = Driver.make(max_bad_commands=3)
    out = d.run("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert replies(out) == [
        "500 5.5.1 Command unrecognized",
        "500 5.5.1 Command unrecognized",
        "500 5.5.1 Command unrecognized",
        "421 4.7.0 Too many errors, closing connection",
    ]
    assert isinstance(d.events[-1], CloseConnection)


def test_invalid_utf8_argument_is_a_syntax_error() -> None:
    d = Driver.make()
    d.conn.receive_data(b"EHLO \xff\xfe\r\n")
    d.pump()
    assert replies(d.conn.data_to_send().decode())[0].startswith("501 5.5.2")


def test_pipelined_commands_pause_for_each_decision() -> None:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.greet()
    conn.data_to_send()
    conn.receive_data((EHLO + TXN + "NOOP\r\n").encode())
    assert isinstance(conn.next_event(), Hello)
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    conn.accept()
    assert isinstance(conn.next_event(), MailFrom)
    conn.reply(Reply(451, "4.3.0", "Try later"))
    error = conn.next_event()  # the RCPT has no MAIL now: the core answers 503 itself
    assert isinstance(error, ProtocolError) and error.reply.code == 503
    assert conn.next_event() is NEED_DATA
    assert codes(conn.data_to_send().decode()) == [250, 451, 503, 250]


def test_answering_when_nothing_is_pending_is_our_error() -> None:
    conn = ServerConnection(ServerSettings(hostname="mx.example.org"))
    conn.greet()
    with pytest.raises(LocalProtocolError):
        conn.accept()
    conn.receive_data(EHLO.encode())
    with pytest.raises(LocalProtocolError):
        conn.accept()  # the Hello was not handed out yet
    assert isinstance(conn.next_event(), Hello)
    with pytest.raises(LocalProtocolError):
        conn.reply(Reply(250, "2.0.0", "positive answers go through accept()"))
    with pytest.raises(LocalProtocolError):
        conn.auth_challenge(b"")
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_app_reply_421_closes() -> None:
    d = Driver.make()
    d.decide = lambda e: Reply(421, "4.3.2", "Shutting down") if isinstance(e, MailFrom) else None
    out = d.run(EHLO + TXN)
    assert replies(out)[-1] == "421 4.3.2 Shutting down"
    assert isinstance(d.events[-1], CloseConnection)


def test_expn_without_argument_is_501() -> None:
    # RFC 5321 §4.1.1.7: "EXPN" SP String CRLF.
    d = Driver.make()
    assert replies(d.run(EHLO + "EXPN\r\n"))[-1] == "501 5.5.4 Invalid command arguments"


def test_mail_and_rcpt_lines_may_carry_long_parameters() -> None:
    """RFC 5321 §4.5.3.1.4 with RFC 3461 §4.2: a RCPT with a 500-character ORCPT is over 512
    octets and still read; other commands keep the plain limit, MAIL and RCPT a bounded one."""
    d = Driver.make(dsn=True)
    orcpt = "rfc822;" + "o" * 483 + "@b.example"
    assert len(orcpt) == 500
    rcpt = f"RCPT TO:<{'l' * 64}@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n"
    assert len(rcpt) > 512
    mail = "MAIL FROM:<a@b.example> RET=HDRS ENVID=" + "e" * 100 + " SIZE=10 " + "x" * 400
    assert codes(d.run(EHLO + mail + "\r\n")) == [250, 555]  # read whole: an unknown parameter
    assert codes(d.run("MAIL FROM:<a@b.example>\r\n" + rcpt)) == [250, 250]
    assert codes(d.run("NOOP " + "x" * 600 + "\r\n")) == [500]
    assert codes(d.run("RCPT TO:<a@b.example> " + "x" * 1600 + "\r\n")) == [500]
