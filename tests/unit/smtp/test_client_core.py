"""The sans-IO SMTP client core: replies, EHLO, parameters, xtext, dot-stuffing, BDAT, LMTP."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hato.model import Address, Reply
from hato.smtp import (
    BodyChunk,
    Hello,
    MailFrom,
    MessageEnd,
    RcptTo,
    Sentinel,
    ServerConnection,
    ServerSettings,
)
from hato.smtp.client import (
    Answer,
    ClientConnection,
    ClientState,
    Expect,
    LocalProtocolError,
    RemoteProtocolError,
)
from hato.smtp.client_body import BdatFramer, DotStuffer
from hato.smtp.client_commands import (
    CommandError,
    SaslClient,
    mail_command,
    rcpt_command,
    unitext,
    xtext,
)
from hato.smtp.client_ehlo import parse_ehlo
from hato.smtp.client_replies import ReplyParser

BOB = Address("bob", "example.org")


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    out: list[Reply] = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


# ---- replies ----
def test_single_and_multiline_replies_with_enhanced_codes() -> None:
    replies = parse_all(
        b"250 2.1.0 Ok\r\n550-5.1.1 No such\r\n550-5.1.1 user here\r\n550 5.1.1 sorry\r\n354 Go\r\n"
    )
    assert replies == [
        Reply(250, "2.1.0", "Ok"),
        Reply(550, "5.1.1", "No such\nuser here\nsorry"),
        Reply(354, None, "Go"),
    ]


def test_enhanced_code_must_match_the_class_and_bare_code_lines() -> None:
    assert parse_all(b"250 4.1.0 odd\r\n") == [Reply(250, None, "4.1.0 odd")]
    assert parse_all(b"250\r\n") == [Reply(250, None, "")]
    assert parse_all(b"421 4.4.2\r\n") == [Reply(421, "4.4.2", "")]


def test_replies_split_byte_by_byte() -> None:
    wire = b"250-mx.example.org hi\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
    parser = ReplyParser()
    got: list[Reply] = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        if (reply := parser.next_reply()) is not None:
            got.append(reply)
    assert got == [Reply(250, None, "mx.example.org hi\nPIPELINING\nSIZE 100")]


@pytest.mark.parametrize(
    "garbage",
    [b"hello\r\n", b"600 bad\r\n", b"25 short\r\n", b"250x\r\n", b"250-a\r\n251 b\r\n"],
)
def test_garbage_is_a_remote_protocol_error(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_all(garbage)


def test_endless_line_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_all(b"250 " + b"x" * 10000)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_all(data)


# ---- EHLO ----
def test_ehlo_capabilities() -> None:
    reply = Reply(
        250,
        None,
        "mx.example.org Hello\nPIPELINING\nSIZE 35882577\n8BITMIME\nsmtputf8\nCHUNKING\n"
        "STARTTLS\nAUTH PLAIN LOGIN\nAUTH=CRAM-MD5\nDSN\nENHANCEDSTATUSCODES\nREQUIRETLS\nX-FOO",
    )
    caps = parse_ehlo(reply)
    assert caps.esmtp and caps.pipelining and caps.eight_bit_mime and caps.smtputf8
    assert caps.chunking and caps.starttls and caps.dsn and caps.enhanced_status_codes
    assert caps.requiretls and caps.size == 35882577
    assert caps.auth == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert caps.server_name == "mx.example.org"
    assert "X-FOO" in caps.keywords


def test_ehlo_minimal_and_size_without_value() -> None:
    caps = parse_ehlo(Reply(250, None, "mx\nSIZE"))
    assert caps.size == 0 and not caps.pipelining and not caps.starttls and caps.auth == ()
    assert parse_ehlo(Reply(250, None, "mx")).size is None


# ---- commands ----
def test_xtext_and_unitext() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("jöe") == "j+C3+B6e"
    assert unitext("jöe+x") == "jöe\\x{2B}x"


def test_mail_and_rcpt_parameters() -> None:
    assert mail_command(
        Address("a", "example.com"),
        size=123,
        body="8BITMIME",
        smtputf8=True,
        ret="hdrs",
        envid="id+1",
        requiretls=True,
    ) == (
        b"MAIL FROM:<a@example.com> SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1 "
        b"REQUIRETLS\r\n"
    )
    assert mail_command(None) == b"MAIL FROM:<>\r\n"
    assert (
        rcpt_command(BOB, notify="failure,delay", orcpt="rfc822;b+x@example.org")
        == b"RCPT TO:<bob@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+2Bx@example.org\r\n"
    )
    assert rcpt_command(BOB, orcpt="bob@example.org").endswith(b"ORCPT=rfc822;bob@example.org\r\n")
    utf8 = rcpt_command(Address("jöe", "example.org"), orcpt="jöe@example.org", smtputf8=True)
    assert utf8 == "RCPT TO:<jöe@example.org> ORCPT=utf-8;jöe@example.org\r\n".encode()


@pytest.mark.parametrize("notify", ["NEVER,SUCCESS", "SOMETIMES", "SUCCESS,SUCCESS"])
def test_bad_notify_is_our_error(notify: str) -> None:
    with pytest.raises(CommandError):
        rcpt_command(BOB, notify=notify)


def test_no_crlf_injection_in_commands() -> None:
    with pytest.raises(CommandError):
        mail_command(Address("a", "example.com"), ret="FULL\r\nRCPT TO:<x@y>")


def test_sasl_plain_and_login() -> None:
    plain = SaslClient("PLAIN", "alice", "secret")
    assert plain.start() == b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
    login = SaslClient("LOGIN", "alice", "secret")
    assert login.start() == b"AUTH LOGIN\r\n"
    assert login.respond(b"Username:") == base64.b64encode(b"alice") + b"\r\n"
    assert login.respond(b"Password:") == base64.b64encode(b"secret") + b"\r\n"
    assert login.respond(b"?") == b"*\r\n"


# ---- dot-stuffing, checked against Hato's own server core ----
def normalised(body: bytes) -> bytes:
    out = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return out + b"\r\n" if out and not out.endswith(b"\r\n") else out


def server_body(wire_pieces: list[bytes]) -> tuple[bytes, list[object]]:
    conn = ServerConnection(ServerSettings("mx.example.org", max_message_size=0, max_text_line=0))
    conn.greet()
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    events: list[object] = []

    def pump() -> None:
        while not isinstance(event := conn.next_event(), Sentinel):
            events.append(event)
            if isinstance(event, Hello | MailFrom | RcptTo | MessageEnd):
                conn.accept()

    pump()
    for piece in wire_pieces:
        conn.receive_data(piece)
        pump()
    body = b"".join(e.data for e in events if isinstance(e, BodyChunk))
    return body, events


def stuff(chunks: list[bytes]) -> list[bytes]:
    stuffer = DotStuffer()
    return [stuffer.feed(c) for c in chunks] + [stuffer.finish()]


@pytest.mark.parametrize(
    "body,wire",
    [
        (b"", b".\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"x\ry", b"x\r\ny\r\n.\r\n"),
        (b"no newline", b"no newline\r\n.\r\n"),
    ],
)
def test_dot_stuffing_examples(body: bytes, wire: bytes) -> None:
    assert b"".join(stuff([body])) == wire


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b"\xff", b".\r\n"]), max_size=40),
    st.lists(st.integers(min_value=0, max_value=60), max_size=6),
    st.integers(min_value=1, max_value=7),
)
def test_dot_stuffing_round_trips_through_the_server_core(
    parts: list[bytes], cuts: list[int], wire_step: int
) -> None:
    body = b"".join(parts)
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    wire = b"".join(stuff(chunks))
    assert b"\r\n.\r\n" not in wire[:-3] or wire.count(b"\r\n.\r\n") == 1
    pieces = [wire[i : i + wire_step] for i in range(0, len(wire), wire_step)]
    got, events = server_body(pieces)
    assert got == normalised(body)
    assert [e for e in events if isinstance(e, MessageEnd)] == [MessageEnd(len(got))]


def test_bdat_framing_normalises_and_counts() -> None:
    framer = BdatFramer()
    assert framer.chunk(b"a\nb\r") == b"BDAT 4\r\na\r\nb"  # the CR waits for its LF
    assert framer.chunk(b"\nc") == b"BDAT 3\r\n\r\nc"
    assert framer.last(b"\xff") == b"BDAT 1 LAST\r\n\xff"
    assert framer.size == 8 and framer.eight_bit
    assert BdatFramer().last() == b"BDAT 0 LAST\r\n"
    assert BdatFramer().chunk(b"\r") == b""  # nothing to send until the next chunk


# ---- the state machine ----
def feed(conn: ClientConnection, data: bytes) -> list[Answer]:
    conn.receive_data(data)
    out: list[Answer] = []
    while (answer := conn.next_answer()) is not None:
        out.append(answer)
    return out


def state_of(conn: ClientConnection) -> ClientState:
    return conn.state  # (a call, so that mypy does not keep an earlier narrowing)


def ready_client(*, lmtp: bool = False) -> ClientConnection:
    conn = ClientConnection(lmtp=lmtp)
    feed(conn, b"220 mx ESMTP\r\n")
    assert conn.hello("client.example") == (b"LHLO" if lmtp else b"EHLO") + b" client.example\r\n"
    feed(conn, b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert conn.state is ClientState.READY and conn.capabilities.pipelining
    return conn


def test_pipelined_transaction_pairs_replies_in_order() -> None:
    conn = ready_client()
    conn.mail(Address("a", "example.com"))
    conn.rcpt(BOB)
    conn.rcpt(Address("carol", "example.org"))
    conn.data()
    answers = feed(conn, b"250 2.1.0 ok\r\n550 5.1.1 no\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert [(a.expect, a.reply.code, a.index) for a in answers] == [
        (Expect.MAIL, 250, 0),
        (Expect.RCPT, 550, 0),
        (Expect.RCPT, 250, 1),
        (Expect.DATA, 354, 0),
    ]
    assert conn.accepted == [1] and conn.state is ClientState.DATA
    assert conn.body(b".x") == b"..x"
    assert conn.end_body() == b"\r\n.\r\n"
    assert [a.expect for a in feed(conn, b"250 2.0.0 queued\r\n")] == [Expect.MESSAGE]
    assert state_of(conn) is ClientState.READY


def test_refused_mail_with_pipelined_rcpt_and_data_returns_to_ready() -> None:
    conn = ready_client()
    conn.mail(Address("a", "example.com"))
    conn.rcpt(BOB)
    conn.data()
    feed(conn, b"550 5.7.1 no\r\n503 5.5.1 seq\r\n554 5.5.1 no rcpt\r\n")
    assert conn.state is ClientState.READY and conn.waiting == 0


def test_lmtp_gives_one_reply_per_accepted_recipient() -> None:
    conn = ready_client(lmtp=True)
    conn.mail(None)
    for name in ("a", "b", "c"):
        conn.rcpt(Address(name, "example.org"))
    conn.data()
    feed(conn, b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    conn.body(b"hi\r\n")
    conn.end_body()
    assert conn.waiting == 2
    answers = feed(conn, b"250 2.0.0 a done\r\n452 4.2.2 c full\r\n")
    assert [(a.expect, a.index, a.reply.code) for a in answers] == [
        (Expect.MESSAGE, 0, 250),
        (Expect.MESSAGE, 2, 452),
    ]
    assert conn.state is ClientState.READY


def test_lmtp_body_end_before_rcpt_replies_is_misuse() -> None:
    conn = ready_client(lmtp=True)
    conn.mail(None)
    conn.rcpt(BOB)
    conn.bdat(b"x")
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"", last=True)


def test_state_table_refuses_misuse() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.mail(None)  # before the greeting and EHLO
    feed(conn, b"220 hi\r\n")
    with pytest.raises(LocalProtocolError):
        conn.rcpt(BOB)
    with pytest.raises(LocalProtocolError):
        conn.starttls()  # EHLO first


def test_unexpected_reply_and_eof_are_remote_errors() -> None:
    conn = ready_client()
    with pytest.raises(RemoteProtocolError):
        feed(conn, b"250 surprise\r\n")
    conn = ready_client()
    conn.noop()
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_answer()


def test_421_closes() -> None:
    conn = ready_client()
    conn.mail(None)
    conn.rcpt(BOB)
    feed(conn, b"421 4.3.2 shutting down\r\n")
    assert conn.state is ClientState.CLOSED and conn.waiting == 0


def test_starttls_injection_is_refused() -> None:
    conn = ready_client()
    conn.starttls()
    feed(conn, b"220 go\r\n")
    conn.receive_data(b"250 injected\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.tls_established()


def test_auth_login_exchange() -> None:
    conn = ready_client()
    conn.auth("LOGIN", "alice", "secret")
    feed(conn, b"334 VXNlcm5hbWU6\r\n")
    assert conn.auth_response() == b"YWxpY2U=\r\n"
    feed(conn, b"334 UGFzc3dvcmQ6\r\n")
    assert conn.auth_response() == b"c2VjcmV0\r\n"
    feed(conn, b"235 2.7.0 ok\r\n")
    assert conn.authenticated and conn.state is ClientState.READY
