"""The sans-IO milter core: every command we send, byte for byte as libmilter reads it, and
every reply a milter may send, parsed; the negotiation's NO*/NR_* flags."""

from __future__ import annotations

import struct

import pytest

from hato.milter.protocol import (
    MAX_BODY_CHUNK,
    OUR_ACTIONS,
    OUR_STEPS,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    Command,
    Continue,
    DeleteRecipient,
    Discard,
    Event,
    InsertHeader,
    MilterProtocolError,
    Negotiated,
    OptionsReply,
    Progress,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    ReplyReader,
    Skip,
    Step,
    Tempfail,
    body_commands,
    connect_command,
    header_command,
    helo_command,
    macro_command,
    mail_command,
    optneg_command,
    packet,
    rcpt_command,
    simple_command,
)


def _unpack(data: bytes) -> tuple[bytes, bytes]:
    (length,) = struct.unpack("!I", data[:4])
    assert length == len(data) - 4
    return data[4:5], data[5:]


def test_optneg_offers_version_6_our_actions_and_steps() -> None:
    code, data = _unpack(optneg_command())
    assert code == b"O"
    assert struct.unpack("!III", data) == (6, OUR_ACTIONS, OUR_STEPS)
    assert not OUR_STEPS & Step.RCPT_REJ


@pytest.mark.parametrize(
    ("built", "code", "data"),
    [
        (connect_command("[192.0.2.1]", "192.0.2.1", 25), b"C",
         b"[192.0.2.1]\0" + b"4" + struct.pack("!H", 25) + b"192.0.2.1\0"),
        (connect_command("[2001:db8::1]", "2001:db8::1", 0), b"C",
         b"[2001:db8::1]\0" + b"6" + struct.pack("!H", 0) + b"2001:db8::1\0"),
        (connect_command("localhost", "", 0), b"C", b"localhost\0U"),
        (helo_command("client.example"), b"H", b"client.example\0"),
        (mail_command("<a@b.example>", ("SIZE=10", "BODY=8BITMIME")), b"M",
         b"<a@b.example>\0SIZE=10\0BODY=8BITMIME\0"),
        (rcpt_command("<c@d.example>"), b"R", b"<c@d.example>\0"),
        (header_command("Subject", "hi"), b"L", b"Subject\0hi\0"),
        (macro_command(Command.MAIL, {"i": "q1", "{auth_authen}": "u"}), b"D",
         b"Mi\0q1\0{auth_authen}\0u\0"),
        (simple_command(Command.DATA), b"T", b""),
        (simple_command(Command.EOH), b"N", b""),
        (simple_command(Command.BODYEOB), b"E", b""),
        (simple_command(Command.ABORT), b"A", b""),
        (simple_command(Command.QUIT), b"Q", b""),
        (simple_command(Command.QUIT_NC), b"K", b""),
    ],
)  # fmt: skip
def test_commands(built: bytes, code: bytes, data: bytes) -> None:
    assert _unpack(built) == (code, data)


def test_body_chunks_are_at_most_65535_octets() -> None:
    body = bytes(range(256)) * 600  # 153600 octets
    packets = body_commands(body)
    parts = [_unpack(p) for p in packets]
    assert [len(d) for _, d in parts] == [MAX_BODY_CHUNK, MAX_BODY_CHUNK, 153600 - 2 * 65535]
    assert all(c == b"B" for c, _ in parts)
    assert b"".join(d for _, d in parts) == body
    assert body_commands(b"") == []


def _reply(code: bytes, data: bytes = b"") -> Event:
    reader = ReplyReader()
    reader.receive_data(struct.pack("!I", len(data) + 1) + code + data)
    event = reader.next_event()
    assert event is not None
    assert reader.next_event() is None
    return event


@pytest.mark.parametrize(
    ("code", "data", "event"),
    [
        (b"c", b"", Continue()),
        (b"a", b"", Accept()),
        (b"r", b"", Reject()),
        (b"t", b"", Tempfail()),
        (b"d", b"", Discard()),
        (b"s", b"", Skip()),
        (b"p", b"", Progress()),
        (b"y", b"554 5.7.1 Gtube pattern\0", ReplyCode(554, "5.7.1 Gtube pattern")),
        (b"y", b"451 4.7.1 later", ReplyCode(451, "4.7.1 later")),
        (b"h", b"X-Spam\0yes\0", AddHeader("X-Spam", "yes")),
        (b"i", struct.pack("!I", 0) + b"X-First\0 v\0", InsertHeader(0, "X-First", " v")),
        (b"m", struct.pack("!I", 2) + b"Subject\0new\0", ChangeHeader(2, "Subject", "new")),
        (b"m", struct.pack("!I", 1) + b"X-Old\0\0", ChangeHeader(1, "X-Old", "")),
        (b"e", b"<new@example>\0", ChangeFrom("<new@example>", "")),
        (b"e", b"<new@example>\0SIZE=1\0", ChangeFrom("<new@example>", "SIZE=1")),
        (b"+", b"<r@example>\0", AddRecipient("<r@example>", "")),
        (b"2", b"<r@example>\0NOTIFY=NEVER\0", AddRecipient("<r@example>", "NOTIFY=NEVER")),
        (b"-", b"<r@example>\0", DeleteRecipient("<r@example>")),
        (b"b", b"new body\r\n", ReplaceBody(b"new body\r\n")),
        (b"q", b"virus\0", Quarantine("virus")),
        (b"O", struct.pack("!III", 6, 0x1FF, Step.NOHELO | Step.NR_HDR),
         OptionsReply(Negotiated(6, OUR_ACTIONS, Step.NOHELO | Step.NR_HDR))),
    ],
)  # fmt: skip
def test_replies(code: bytes, data: bytes, event: Event) -> None:
    assert _reply(code, data) == event


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (b"y", b"250 ok\0"),  # a milter may only refuse (4xx/5xx)
        (b"y", b"55 short\0"),
        (b"h", b"only-a-name\0"),
        (b"m", b"\0\0"),  # no 4-octet index
        (b"O", b"\0\0\0\6"),
        (b"O", struct.pack("!III", 1, 0, 0)),
        (b"Z", b""),
    ],
)
def test_nonsense_replies_are_protocol_errors(code: bytes, data: bytes) -> None:
    with pytest.raises(MilterProtocolError):
        _reply(code, data)


@pytest.mark.parametrize("length", [0, 1024 * 1024 * 4 + 1])
def test_impossible_lengths_are_protocol_errors(length: int) -> None:
    reader = ReplyReader()
    reader.receive_data(struct.pack("!I", length) + b"c")
    with pytest.raises(MilterProtocolError):
        reader.next_event()


def test_negotiated_steps_decide_what_is_sent_and_answered() -> None:
    agreed = Negotiated(6, Action.ADDHDRS, Step.NOHELO | Step.NOBODY | Step.NR_HDR | Step.NR_RCPT)
    assert not agreed.sends(Command.HELO)
    assert not agreed.sends(Command.BODY)
    assert agreed.sends(Command.HEADER) and not agreed.answers(Command.HEADER)
    assert agreed.sends(Command.RCPT) and not agreed.answers(Command.RCPT)
    assert agreed.answers(Command.MAIL) and agreed.answers(Command.BODYEOB)
    for silent in (Command.MACRO, Command.QUIT, Command.ABORT):
        assert agreed.sends(silent) and not agreed.answers(silent)


def test_a_milter_cannot_take_actions_we_did_not_offer() -> None:
    event = _reply(b"O", struct.pack("!III", 6, 0xFFFFFFFF, 0))
    assert isinstance(event, OptionsReply)
    assert event.negotiated.actions == OUR_ACTIONS
    assert not event.negotiated.actions & Action.SETSYMLIST


def test_packet_length_counts_the_command_octet() -> None:
    assert packet(Command.DATA) == b"\0\0\0\1T"
