"""DATA and BDAT in the SMTP server core: framing, dot-unstuffing, smuggling, limits."""

from __future__ import annotations

from typing import Any

import pytest

from hato.model import Reply
from hato.smtp import (
    BodyChunk,
    CloseConnection,
    DataStart,
    MessageAborted,
    MessageEnd,
    ProtocolError,
    State,
    TransactionReset,
)
from kit.smtp_core import EHLO, TXN, Driver, codes, replies

START = EHLO + TXN


def data_session(body: bytes, **settings: Any) -> Driver:
    d = Driver.make(**settings)
    d.run(START + "DATA\r\n")
    d.conn.receive_data(body)
    d.pump()
    return d


def test_data_happy_path_and_queue_id_text() -> None:
    d = Driver.make()
    d.decide = lambda e: "Ok: queued as ABC123" if isinstance(e, MessageEnd) else None
    out = d.run(START + "DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert replies(out)[3:] == [
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as ABC123",
        "221 2.0.0 Bye",
    ]
    assert d.of_type(DataStart) == [DataStart(bdat=False)]
    assert d.body() == b"Subject: x\r\n\r\nhello\r\n"
    assert d.of_type(MessageEnd) == [MessageEnd(size=len(b"Subject: x\r\n\r\nhello\r\n"))]


def test_empty_message() -> None:
    d = data_session(b".\r\n")
    assert d.of_type(MessageEnd) == [MessageEnd(size=0)]
    assert d.body() == b""


@pytest.mark.parametrize(
    "wire,content",
    [
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..leading\r\n.\r\n", b".leading\r\n"),
        (b"a\r\n..b\r\n...c\r\n.\r\n", b"a\r\n.b\r\n..c\r\n"),
        (b"a.\r\nb. .\r\n.\r\n", b"a.\r\nb. .\r\n"),
        (b"x\r\n.. \r\n.\r\n", b"x\r\n. \r\n"),
    ],
)
def test_dot_unstuffing_is_exact(wire: bytes, content: bytes) -> None:
    for split in range(len(wire) + 1):
        d = Driver.make()
        d.run(START + "DATA\r\n")
        d.run(wire[:split])
        d.run(wire[split:])
        assert d.body() == content, split
        assert d.of_type(MessageEnd) == [MessageEnd(size=len(content))]


def test_data_byte_by_byte() -> None:
    wire = b"Subject: t\r\n\r\n..dot\r\nline\r\n\r\n.\r\nNOOP\r\n"
    d = Driver.make()
    d.run(START + "DATA\r\n")
    out = ""
    for i in range(len(wire)):
        out += d.run(wire[i : i + 1])
    assert d.body() == b"Subject: t\r\n\r\n.dot\r\nline\r\n\r\n"
    assert codes(out) == [250, 250]


def test_one_body_chunk_per_read() -> None:
    d = data_session(b"line 1\r\nline 2\r\nline 3\r\n" * 100)
    assert len(d.of_type(BodyChunk)) == 1


@pytest.mark.parametrize(
    "smuggled",
    [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"x\ry", b"x\ny", b"\r\r\n"],
)
def test_smuggling_in_data_is_refused_and_closes(smuggled: bytes) -> None:
    body = b"Subject: a\r\n\r\nfirst" + smuggled + b"MAIL FROM:<evil@x.example>\r\n"
    for split in range(len(body) + 1):
        d = Driver.make()
        d.run(START + "DATA\r\n")
        out = d.run(body[:split])
        if not d.closed:
            out += d.run(body[split:] + b"\r\n.\r\n")
        assert replies(out) == ["550 5.6.0 Message refused: bare CR or LF not allowed"], split
        assert isinstance(d.events[-2], MessageAborted)
        assert isinstance(d.events[-1], CloseConnection)
        assert not d.of_type(MessageEnd)


def test_smuggled_end_never_ends_data_before_the_refusal() -> None:
    # "\n.\n" must not end the body: no MessageEnd, no reply to the smuggled MAIL.
    d = data_session(b"a\n.\nMAIL FROM:<x@y.example>\r\n")
    assert not d.of_type(MessageEnd)
    assert d.conn.state is State.CLOSED


def test_bare_cr_at_the_very_end_of_a_read_waits_for_the_next_byte() -> None:
    d = data_session(b"line\r")
    assert not d.closed
    d.run(b"\n.\r\n")
    assert d.body() == b"line\r\n"


def test_long_line_is_refused_at_the_end() -> None:
    ok_line = b"x" * 998 + b"\r\n"  # 1000 octets including CRLF
    long_line = b"y" * 999 + b"\r\n"
    d = data_session(ok_line + b".\r\n")
    assert d.of_type(MessageEnd)
    d = data_session(ok_line + long_line + b"after\r\n")
    assert not d.closed and not d.of_type(MessageAborted)
    out = d.run(b".\r\nNOOP\r\n")
    assert replies(out) == ["554 5.6.0 Message line longer than 1000 octets", "250 2.0.0 Ok"]
    assert d.of_type(MessageAborted)[0].reply.code == 554
    assert not d.of_type(MessageEnd)
    assert d.conn.state is State.READY


def test_long_line_across_reads() -> None:
    d = Driver.make()
    d.run(START + "DATA\r\n")
    for _ in range(10):
        d.run(b"z" * 150)
    out = d.run(b"\r\n.\r\n")
    assert replies(out) == ["554 5.6.0 Message line longer than 1000 octets"]


def test_no_line_limit_when_zero() -> None:
    d = data_session(b"q" * 5000 + b"\r\n.\r\n", max_text_line=0)
    assert d.of_type(MessageEnd) == [MessageEnd(size=5002)]


def test_size_limit_while_streaming() -> None:
    d = Driver.make(max_message_size=100)
    d.run(START + "DATA\r\n")
    d.run(b"a" * 60 + b"\r\n")
    d.run(b"b" * 60 + b"\r\n")
    out = d.run(b"c\r\n.\r\nNOOP\r\n")
    assert replies(out) == [
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "250 2.0.0 Ok",
    ]
    assert len(d.body()) <= 100
    assert d.of_type(MessageAborted)[0].reply.code == 552


def test_size_exactly_at_the_limit_passes() -> None:
    d = data_session(b"a" * 98 + b"\r\n.\r\n", max_message_size=100)
    assert d.of_type(MessageEnd) == [MessageEnd(size=100)]


def test_message_refused_by_the_app_ends_the_transaction() -> None:
    d = Driver.make()
    d.decide = lambda e: Reply(451, "4.3.0", "Disk full") if isinstance(e, MessageEnd) else None
    out = d.run(START + "DATA\r\nx\r\n.\r\nRCPT TO:<a@example.org>\r\n")
    assert codes(out)[-2:] == [451, 503]


def test_pipelined_messages() -> None:
    one = TXN + "DATA\r\nbody\r\n.\r\n"
    d = Driver.make()
    out = d.run(EHLO + one * 3 + "QUIT\r\n")
    assert codes(out) == [250] + [250, 250, 354, 250] * 3 + [221]
    assert len(d.of_type(MessageEnd)) == 3


# ---- BDAT ----


def test_bdat_chunks() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\nNOOP\r\n")
    assert replies(out)[3:] == ["250 2.0.0 5 octets received", "250 2.0.0 Ok", "250 2.0.0 Ok"]
    assert d.body() == b"hello world\r\n"
    assert d.of_type(DataStart) == [DataStart(bdat=True)]
    assert d.of_type(MessageEnd) == [MessageEnd(size=13)]


def test_bdat_is_binary_no_unstuffing_no_line_limit() -> None:
    payload = b".\r\n..x\r\n" + b"y" * 3000 + b"\r\n"
    d = Driver.make()
    out = d.run(START + f"BDAT {len(payload)} LAST\r\n".encode().decode() + payload.decode())
    assert codes(out)[-1] == 250
    assert d.body() == payload


def test_bdat_zero_last_ends_a_message() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 3\r\nabcBDAT 0 LAST\r\n")
    assert codes(out)[-2:] == [250, 250]
    assert d.of_type(MessageEnd) == [MessageEnd(size=3)]


def test_bdat_data_split_across_reads() -> None:
    d = Driver.make()
    d.run(START + "BDAT 10 LAST\r\nabc")
    d.run("defg")
    out = d.run("hijNOOP\r\n")
    assert d.body() == b"abcdefghij"
    assert codes(out) == [250, 250]


@pytest.mark.parametrize("piece", [b"a\nb", b"a\rb", b"ab\r"])
def test_bdat_bare_cr_lf_refused_at_the_end(piece: bytes) -> None:
    d = Driver.make()
    out = d.run(START.encode() + b"BDAT %d\r\n" % len(piece) + piece + b"BDAT 2 LAST\r\nxy")
    assert replies(out)[-1] == "550 5.6.0 Message refused: bare CR or LF not allowed"
    assert d.of_type(MessageAborted) and not d.closed


def test_bdat_crlf_split_between_chunks_is_fine() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 2\r\na\rBDAT 2 LAST\r\n\nb")
    assert codes(out)[-1] == 250
    assert d.body() == b"a\r\nb"


def test_bdat_size_limit() -> None:
    d = Driver.make(max_message_size=10)
    out = d.run(START + "BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678")
    assert replies(out)[-2:] == [
        "250 2.0.0 8 octets received",
        "552 5.3.4 Message size exceeds fixed maximum message size",
    ]
    assert d.body() == b"12345678"


@pytest.mark.parametrize("args", ["", "x", "-1", "5 NOTLAST", "5 LAST more", "1e3"])
def test_bad_bdat_size_closes(args: str) -> None:
    d = Driver.make()
    out = d.run(START + f"BDAT {args}\r\nNOOP\r\n")
    assert replies(out)[-1] == "501 5.5.4 Invalid command arguments"
    assert isinstance(d.events[-1], CloseConnection)


def test_bdat_and_data_do_not_mix() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\n")
    assert codes(out)[-3:] == [250, 503, 250]
    assert d.of_type(MessageEnd) == [MessageEnd(size=3)]


def test_refused_bdat_skips_its_octets() -> None:
    d = Driver.make()
    out = d.run(EHLO + "BDAT 6\r\nNOOP\r\nNOOP\r\n")
    assert codes(out) == [250, 503, 250]  # "NOOP\r\n" was the chunk's payload


def test_bdat_after_refused_recipients_is_554_and_skips() -> None:
    d = Driver.make()
    out = d.run(
        EHLO
        + "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@nowhere.example>\r\nBDAT 4 LAST\r\nRSETNOOP\r\n"
    )
    assert replies(out)[-2:] == ["554 5.5.1 No valid recipients", "250 2.0.0 Ok"]


def test_bdat_not_offered() -> None:
    d = Driver.make(chunking=False)
    out = d.run(START + "BDAT 4\r\nQUITNOOP\r\n")
    assert replies(out)[-2:] == ["502 5.5.1 Command not implemented", "250 2.0.0 Ok"]


def test_rset_during_bdat_aborts_the_message() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 3\r\nabcRSET\r\nMAIL FROM:<a@b.example>\r\n")
    assert codes(out)[-3:] == [250, 250, 250]
    assert d.of_type(MessageAborted) == [MessageAborted(Reply(250, "2.0.0", "Ok"))]
    assert d.of_type(TransactionReset)


def test_commands_between_bdat_chunks() -> None:
    d = Driver.make()
    out = d.run(START + "BDAT 1\r\naRCPT TO:<c@example.org>\r\nMAIL FROM:<x@y.example>\r\nNOOP\r\n")
    assert codes(out)[-3:] == [503, 503, 250]
    assert len(d.of_type(ProtocolError)) == 2
