"""The asyncio milter client against a scripted milter on loopback: what it sends at each
step as negotiated (NO*/NR_* flags, macros, body chunks of at most 65535 octets, SKIP), what
it makes of the replies (modifications, progress, an early refusal), and a milter that is
down, silent or closes as MilterUnavailable."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from hato.milter import Command, MilterClient, MilterUnavailable, Outcome, Timeouts, Transaction
from hato.milter.protocol import (
    Accept,
    Action,
    AddHeader,
    ChangeHeader,
    Continue,
    InsertHeader,
    Negotiated,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    Step,
)

TX = Transaction(
    client_name="[192.0.2.1]",
    client_ip="192.0.2.1",
    client_port=0,
    helo="client.example",
    mail_from="<a@sender.example>",
    mail_args=("SIZE=100",),
    recipients=("<b@dest.example>", "<c@dest.example>"),
    macros={Command.CONNECT: {"j": "mx.test"}, Command.MAIL: {"i": "q1"}},
)
MESSAGE = b"Subject: hi\r\nX-Folded: one\r\n two\r\n\r\n" + b"x" * 150000 + b"\r\n"

Answer = Callable[[bytes, bytes], list[bytes]]  # (command, data) -> reply packets


def _p(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + code + data


async def _stream(data: bytes, size: int = 40000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _run(
    answer: Answer,
    steps: int = 0,
    message: bytes = MESSAGE,
    timeouts: Timeouts | None = None,
    replacement: Callable[[bytes], None] | None = None,
) -> tuple[Outcome, list[tuple[bytes, bytes]]]:
    seen: list[tuple[bytes, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                code, data = packet[:1], packet[1:]
                seen.append((code, data))
                if code == b"O":
                    writer.write(_p(b"O", struct.pack("!III", 6, 0xFF, steps)))
                else:
                    writer.write(b"".join(answer(code, data)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = MilterClient(f"inet:127.0.0.1:{port}", timeouts)
        outcome = await client.check(TX, _stream(message), replacement=replacement)
    finally:
        server.close()
    return outcome, seen


def _continue(code: bytes, data: bytes) -> list[bytes]:
    if code in (b"D", b"Q", b"A"):
        return []
    return [_p(b"c")]


def test_a_whole_conversation_and_the_modifications_at_the_end() -> None:
    def answer(code: bytes, data: bytes) -> list[bytes]:
        if code == b"E":
            return [
                _p(b"p"),  # still working
                _p(b"h", b"X-Checked\0yes\0"),
                _p(b"i", struct.pack("!I", 0) + b"X-Top\0first\0"),
                _p(b"m", struct.pack("!I", 1) + b"Subject\0\0"),
                _p(b"b", b"new body\n"),
                _p(b"q", b"suspicious\0"),
                _p(b"a"),
            ]
        return [] if code == b"L" else _continue(code, data)  # SMFIP_NR_HDR

    outcome, seen = asyncio.run(_run(answer, steps=Step.NOHELO | Step.NR_HDR))
    assert outcome == Outcome(
        Accept(),
        (
            AddHeader("X-Checked", "yes"),
            InsertHeader(0, "X-Top", "first"),
            ChangeHeader(1, "Subject", ""),
            ReplaceBody(b"new body\n"),
            Quarantine("suspicious"),
        ),
    )
    codes = [code for code, _ in seen]
    # SMFIP_NOHELO: no HELO; macros just before the step they belong to.
    assert codes[:8] == [b"O", b"D", b"C", b"D", b"M", b"R", b"R", b"T"]
    assert seen[1] == (b"D", b"Cj\0mx.test\0")
    assert seen[3] == (b"D", b"Mi\0q1\0")
    assert seen[4] == (b"M", b"<a@sender.example>\0SIZE=100\0")
    # Header values without the space after the colon, folded lines joined by LF.
    assert [d for c, d in seen if c == b"L"] == [b"Subject\0hi\0", b"X-Folded\0one\n two\0"]
    body = [d for c, d in seen if c == b"B"]
    assert all(len(d) <= 65535 for d in body)
    assert b"".join(body) == MESSAGE.split(b"\r\n\r\n", 1)[1]
    assert codes[-2:] == [b"E", b"Q"] and b"N" in codes


def test_a_new_body_goes_to_the_writer_piece_by_piece_not_into_the_outcome() -> None:
    pieces = [b"x" * 1_000_000, b"y" * 1_000_000, b"z\n"]  # more than MAX_CHANGES in all

    def answer(code: bytes, data: bytes) -> list[bytes]:
        if code == b"E":
            return [*(_p(b"b", piece) for piece in pieces), _p(b"a")]
        return _continue(code, data)

    written: list[bytes] = []
    outcome, _ = asyncio.run(_run(answer, replacement=written.append))
    assert written == pieces
    assert outcome == Outcome(Accept(), (ReplaceBody(b""),) * 3)


def test_changes_past_max_changes_make_the_milter_unavailable() -> None:
    """DESIGN.md: memory per message is bounded, whatever a milter sends back."""
    field = _p(b"h", b"X-Echo\0" + b"e" * 600_000 + b"\0")

    def answer(code: bytes, data: bytes) -> list[bytes]:
        return [field, field, _p(b"a")] if code == b"E" else _continue(code, data)

    with pytest.raises(MilterUnavailable, match="changes over"):
        asyncio.run(_run(answer))


def test_a_reject_at_mail_ends_the_conversation_there() -> None:
    def answer(code: bytes, data: bytes) -> list[bytes]:
        return [_p(b"r")] if code == b"M" else _continue(code, data)

    outcome, seen = asyncio.run(_run(answer))
    assert outcome == Outcome(Reject())
    assert [c for c, _ in seen if c not in (b"D",)] == [b"O", b"C", b"H", b"M", b"Q"]


def test_skip_stops_the_body_and_a_reply_code_is_kept() -> None:
    def answer(code: bytes, data: bytes) -> list[bytes]:
        if code == b"B":
            return [_p(b"s")]
        if code == b"E":
            return [_p(b"y", b"554 5.7.1 Gtube pattern\0")]
        return _continue(code, data)

    outcome, seen = asyncio.run(_run(answer, steps=Step.SKIP))
    assert outcome == Outcome(ReplyCode(554, "5.7.1 Gtube pattern"))
    assert [c for c, _ in seen].count(b"B") == 1


def test_no_reply_steps_are_not_waited_for() -> None:
    unanswered = Step.NR_CONN | Step.NR_HELO | Step.NR_MAIL | Step.NR_RCPT | Step.NR_DATA
    unanswered |= Step.NR_HDR | Step.NR_EOH | Step.NR_BODY

    def answer(code: bytes, data: bytes) -> list[bytes]:
        return [_p(b"c")] if code == b"E" else []

    outcome, _ = asyncio.run(_run(answer, steps=unanswered))
    assert outcome == Outcome(Continue())


@pytest.mark.parametrize("kind", ["silent", "closes", "nonsense"])
def test_a_milter_that_fails_is_unavailable(kind: str) -> None:
    def answer(code: bytes, data: bytes) -> list[bytes]:
        if code == b"M":
            if kind == "closes":
                raise ConnectionError
            return [] if kind == "silent" else [_p(b"Z")]
        return _continue(code, data)

    with pytest.raises(MilterUnavailable):
        asyncio.run(_run(answer, timeouts=Timeouts(1, 0.5, 1)))


def test_a_milter_that_is_down_is_unavailable() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await MilterClient(f"inet:127.0.0.1:{port}").check(TX, _stream(MESSAGE))

    with pytest.raises(MilterUnavailable):
        asyncio.run(go())


def test_a_probe_stops_at_the_envelope_and_aborts() -> None:
    def answer(code: bytes, data: bytes) -> list[bytes]:
        if code == b"R":
            return [_p(b"y", b"550 5.1.1 No such user\0")]
        return _continue(code, data)

    async def go() -> tuple[object, list[bytes], MilterClient]:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (length,) = struct.unpack("!I", await reader.readexactly(4))
                    packet = await reader.readexactly(length)
                    seen.append(packet[:1])
                    if packet[:1] == b"O":
                        writer.write(_p(b"O", struct.pack("!III", 6, 0, Step.NOHELO)))
                    else:
                        writer.write(b"".join(answer(packet[:1], packet[1:])))
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = MilterClient(f"inet:127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert client.wants_envelope  # not asked yet
        final = await client.probe(TX)
        server.close()
        return final, seen, client

    final, seen, client = asyncio.run(go())
    assert final == ReplyCode(550, "5.1.1 No such user")
    assert [c for c in seen if c != b"D"] == [b"O", b"C", b"M", b"R", b"A", b"Q"]
    assert client.wants_envelope


def test_a_milter_that_answers_no_envelope_step_is_not_probed() -> None:
    client = MilterClient("inet:127.0.0.1:9")
    quiet = Step.NOCONNECT | Step.NOHELO | Step.NR_MAIL | Step.NORCPT
    client.agreed = Negotiated(6, Action(0), quiet)
    assert not client.wants_envelope


def test_a_connect_probe_tells_the_connection_alone_and_aborts() -> None:
    """Before the greeting: SMFIC_CONNECT and nothing of the envelope; the milter's
    reject is its word (server/milterearly.py makes it a 554 greeting)."""

    async def go(steps: Step) -> tuple[object, list[bytes], MilterClient]:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (length,) = struct.unpack("!I", await reader.readexactly(4))
                    packet = await reader.readexactly(length)
                    seen.append(packet[:1])
                    if packet[:1] == b"O":
                        writer.write(_p(b"O", struct.pack("!III", 6, 0, steps)))
                    elif packet[:1] == b"C":
                        writer.write(_p(b"r"))  # SMFIR_REJECT
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = MilterClient(f"inet:127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert client.wants_connect  # not asked yet
        final = await client.probe_connect(TX)
        server.close()
        return final, seen, client

    final, seen, client = asyncio.run(go(Step(0)))
    assert isinstance(final, Reject)
    assert [c for c in seen if c != b"D"] == [b"O", b"C", b"A", b"Q"]
    assert client.wants_connect
    # A milter that leaves the connect step out (SMFIP_NOCONNECT), or its reply
    # (SMFIP_NR_CONN), is not asked before the greeting again.
    for steps in (Step.NOCONNECT, Step.NR_CONN):
        final, seen, client = asyncio.run(go(steps))
        assert isinstance(final, Continue) and not client.wants_connect
