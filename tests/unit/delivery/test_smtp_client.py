"""The asyncio SMTP/LMTP client on loopback: against Hato's own server core, and a scripted
peer that refuses, defers, drops and stalls at chosen stages."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from peers.net import refused_port
from test_smtp_client_peers import CoreServer, Script, serving

from hato.delivery.smtp_client import (
    BytesBody,
    ClientSession,
    ConnectOptions,
    DeliveryError,
    MailParams,
    RecipientSpec,
    SendResult,
    TlsMode,
    body_from_message,
)
from hato.model import Address, Delivered, PermFailed, QueuedMessage, Reply, TempFailed
from hato.smtp import ServerSettings

T = TypeVar("T")
ALICE = Address("alice", "example.com")
BOB = RecipientSpec(Address("bob", "example.org"))
CAROL = RecipientSpec(Address("carol", "example.org"))
DAVE = RecipientSpec(Address("dave", "example.org"))
BODY = b"Subject: hi\r\n\r\n.leading dot\r\nbare\nLF\r\n"
WIRE_BODY = b"Subject: hi\r\n\r\n.leading dot\r\nbare\r\nLF\r\n"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def options(port: int, **kw: Any) -> ConnectOptions:
    base: dict[str, Any] = {"tls_mode": TlsMode.NONE, "quit_timeout": 1.0}
    return ConnectOptions("127.0.0.1", port, "client.example.com", **(base | kw))


async def send_once(
    port: int, recipients: list[RecipientSpec], body: bytes = BODY, **kw: Any
) -> SendResult:
    session = await ClientSession.open(options(port, **kw))
    try:
        return await session.send(ALICE, recipients, BytesBody(body), mail_params=MailParams())
    finally:
        await session.close()


# ---- (a) Hato's own server core ----
@pytest.mark.parametrize("chunking", [False, True])
def test_delivers_to_hato_server_core_and_reuses_the_connection(
    chunking: bool, tmp_path: Path
) -> None:
    server = CoreServer(ServerSettings("mx.example.org", chunking=chunking, dsn=True))
    body_file = tmp_path / "body"
    big = (b"line of text\r\n.dot line\r\n" * 8000) + b"\xe2\x82\xac end"
    body_file.write_bytes(big)
    queued = QueuedMessage("Q1", ALICE, 0.0, str(body_file), len(big), prefix=b"Received: x\r\n")

    async def scenario() -> tuple[list[SendResult], bool]:
        async with serving(server.handle) as port:
            session = await ClientSession.open(options(port))
            assert session.capabilities.pipelining and session.capabilities.chunking is chunking
            first = await session.send(
                ALICE,
                [RecipientSpec(BOB.address, notify="FAILURE", orcpt="rfc822;bob@example.org")],
                BytesBody(BODY),
                mail_params=MailParams(envid="env+1", ret="HDRS"),
            )
            await session.reset()
            second = await session.send(
                None, [BOB, CAROL], body_from_message(queued), mail_params=MailParams()
            )
            usable = session.usable
            await session.close()
            return [first, second], usable

    (first, second), usable = run(scenario())
    assert usable
    assert [type(o) for o in first.outcomes] == [Delivered]
    assert [type(o) for o in second.outcomes] == [Delivered, Delivered]
    one, two = server.messages
    assert one.body == WIRE_BODY
    assert one.params["ENVID"] == "env+2B1" and one.params["RET"] == "HDRS"
    assert one.params["BODY"] == "8BITMIME"
    assert two.mail_from == "" and two.recipients == ["bob@example.org", "carol@example.org"]
    assert two.body == b"Received: x\r\n" + big + (b"" if chunking else b"\r\n")


def test_inline_body_from_message() -> None:
    message = QueuedMessage("Q2", ALICE, 0.0, "", 5, prefix=b"X: y\r\n", body=b"hello")
    body = body_from_message(message)
    assert body.size == 11

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in body.chunks()])

    assert run(collect()) == b"X: y\r\nhello"


# ---- (c) a scripted peer ----
def test_per_recipient_outcomes_keep_the_peer_reply() -> None:
    script = Script(
        rcpt={"carol": b"450 4.2.1 Mailbox busy\r\n", "dave": b"550 5.1.1 No such user\r\n"}
    )

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB, CAROL, DAVE])

    result = run(scenario())
    assert result.outcomes == (
        Delivered("250 2.0.0 Ok: queued as X1"),
        TempFailed(Reply(450, "4.2.1", "Mailbox busy")),
        PermFailed(Reply(550, "5.1.1", "No such user")),
    )
    assert result.reply == Reply(250, "2.0.0", "Ok: queued as X1")
    # PIPELINING: MAIL, the RCPTs and DATA came in one write; the body was dot-stuffed
    assert script.commands[1:6] == [
        b"MAIL FROM:<alice@example.com> SIZE=38 BODY=8BITMIME\r\n",
        b"RCPT TO:<bob@example.org>\r\n",
        b"RCPT TO:<carol@example.org>\r\n",
        b"RCPT TO:<dave@example.org>\r\n",
        b"DATA\r\n",
    ]
    assert script.bodies == [WIRE_BODY.replace(b"\n.", b"\n..") + b".\r\n"]


@pytest.mark.parametrize(
    "stage,reply,kind",
    [
        ("mail", b"451 4.3.0 Try later\r\n", TempFailed),
        ("mail", b"550 5.7.1 Sender refused\r\n", PermFailed),
        ("data", b"554 5.5.1 No thanks\r\n", PermFailed),
        ("dot", b"451 4.3.0 Local error\r\n", TempFailed),
        ("dot", b"552 5.3.4 Too big\r\n", PermFailed),
        ("dot", b"421 4.3.2 Shutting down\r\n", TempFailed),
    ],
)
def test_refusals_at_each_stage(stage: str, reply: bytes, kind: type) -> None:
    script = Script()
    setattr(script, stage, reply)

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB, CAROL])

    result = run(scenario())
    code = int(reply[:3])
    assert [type(o) for o in result.outcomes] == [kind, kind]
    assert all(o.reply.code == code for o in result.outcomes if not isinstance(o, Delivered))


def test_421_on_rcpt_defers_everyone_and_ends_the_session() -> None:
    script = Script(rcpt={"carol": b"421 4.4.5 Too busy\r\n"})

    async def scenario() -> tuple[SendResult, bool]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            result = await session.send(ALICE, [BOB, CAROL, DAVE], BytesBody(BODY))
            usable = session.usable
            await session.close()
            return result, usable

    result, usable = run(scenario())
    assert not usable
    assert result.outcomes == tuple(TempFailed(Reply(421, "4.4.5", "Too busy")) for _ in range(3))


def test_connection_dropped_mid_data_defers_all() -> None:
    script = Script(drop_in_data=True, rcpt={"carol": b"550 5.1.1 No\r\n"})

    async def scenario() -> tuple[SendResult, bool]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            result = await session.send(ALICE, [BOB, CAROL], BytesBody(BODY * 2000))
            usable = session.usable
            await session.close()
            return result, usable

    result, usable = run(scenario())
    assert not usable
    bob, carol = result.outcomes
    assert isinstance(bob, TempFailed) and bob.reply.enhanced == "4.4.2"
    assert isinstance(carol, PermFailed)  # refused at RCPT, before the drop


@pytest.mark.parametrize(
    "greeting,permanent", [(b"421 4.3.2 Go away\r\n", False), (b"554 No service\r\n", True)]
)
def test_greeting_refusal(greeting: bytes, permanent: bool) -> None:
    script = Script(greeting=greeting)

    async def scenario() -> None:
        async with serving(script.handle) as port:
            await ClientSession.open(options(port))

    with pytest.raises(DeliveryError) as info:
        run(scenario())
    assert info.value.stage == "greeting" and info.value.permanent is permanent
    assert info.value.reply.code == int(greeting[:3])


def test_connection_refused_and_greeting_timeout() -> None:
    with refused_port() as port, pytest.raises(DeliveryError) as info:
        run(ClientSession.open(options(port)))
    assert info.value.stage == "connect" and info.value.reply.enhanced == "4.4.1"
    assert not info.value.permanent

    script = Script(silent=True)

    async def scenario() -> None:
        async with serving(script.handle) as port:
            await ClientSession.open(options(port, greeting_timeout=0.2))

    with pytest.raises(DeliveryError) as info:
        run(scenario())
    assert info.value.stage == "greeting" and info.value.reply.code == 421


def test_without_pipelining_one_command_per_round_trip_and_helo_fallback() -> None:
    script = Script(ehlo=b"502 5.5.1 What?\r\n", rcpt={"bob": b"550 5.1.1 No\r\n"})

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB, CAROL], body=b"hi")

    result = run(scenario())
    assert [type(o) for o in result.outcomes] == [PermFailed, Delivered]
    assert script.commands[1] == b"HELO client.example.com\r\n"
    assert script.commands[2] == b"MAIL FROM:<alice@example.com>\r\n"  # no ESMTP parameters
    assert script.bodies == [b"hi\r\n.\r\n"]


def test_no_downgrade_for_8bit_and_smtputf8() -> None:
    seven_bit_peer = b"250-mx\r\n250 PIPELINING\r\n"
    script = Script(ehlo=seven_bit_peer)

    async def scenario() -> list[SendResult]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            known = await session.send(ALICE, [BOB], BytesBody(b"caf\xc3\xa9", eight_bit=True))
            utf8 = await session.send(
                ALICE, [RecipientSpec(Address("jöe", "example.org"))], BytesBody(b"x")
            )
            # 8-bitness unknown: found while sending; the body is never ended
            scanned = await session.send(
                ALICE, [BOB], BytesBody(b"a" * 100 + b"\xff"), mail_params=MailParams()
            )
            await session.close()
            return [known, utf8, scanned]

    known, utf8, scanned = run(scenario())
    assert isinstance(known.outcomes[0], PermFailed)
    assert known.outcomes[0].reply.enhanced == "5.6.3"
    assert isinstance(utf8.outcomes[0], PermFailed)
    assert utf8.outcomes[0].reply.enhanced == "5.6.7"
    assert isinstance(scanned.outcomes[0], PermFailed)
    assert scanned.outcomes[0].reply.enhanced == "5.6.3"
    assert sum(c.startswith(b"MAIL") for c in script.commands) == 1  # only the scanned one
    assert script.bodies == []  # the scanned message never got its final dot


def test_lmtp_one_reply_per_accepted_recipient() -> None:
    script = Script(
        ehlo=b"250-lmtp.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        rcpt={"carol": b"550 5.1.1 Unknown\r\n"},
        dot=b"250 2.0.0 bob ok\r\n452 4.2.2 dave over quota\r\n",
    )

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB, CAROL, DAVE], lmtp=True)

    result = run(scenario())
    assert script.commands[0] == b"LHLO client.example.com\r\n"
    assert result.outcomes == (
        Delivered("250 2.0.0 bob ok"),
        PermFailed(Reply(550, "5.1.1", "Unknown")),
        TempFailed(Reply(452, "4.2.2", "dave over quota")),
    )


def test_bdat_to_a_scripted_chunking_peer() -> None:
    script = Script(ehlo=b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n")
    body = b"x" * 70000 + b"\nend"

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB], body=body)

    result = run(scenario())
    assert isinstance(result.outcomes[0], Delivered)
    assert b"".join(script.bodies) == body.replace(b"\n", b"\r\n")
    assert [c.split(b" ")[0] for c in script.commands[1:]] == [
        b"MAIL",
        b"RCPT",
        b"BDAT",
        b"BDAT",
        b"QUIT\r\n",
    ]


def test_no_recipient_accepted_sends_no_body() -> None:
    script = Script(rcpt={"bob": b"550 5.1.1 No\r\n"}, data=b"554 5.5.1 No valid recipients\r\n")

    async def scenario() -> tuple[SendResult, bool]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            result = await session.send(ALICE, [BOB], BytesBody(BODY))
            usable = session.usable
            await session.close()
            return result, usable

    result, usable = run(scenario())
    assert usable and result.outcomes == (PermFailed(Reply(550, "5.1.1", "No")),)
    assert script.bodies == []


def test_size_limit_and_requiretls_are_checked_before_sending() -> None:
    script = Script()  # SIZE 100000, no TLS, no REQUIRETLS

    async def scenario() -> list[SendResult]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            big = await session.send(ALICE, [BOB], BytesBody(b"x" * 100001))
            tls = await session.send(
                ALICE, [BOB], BytesBody(b"x"), mail_params=MailParams(requiretls=True)
            )
            await session.close()
            return [big, tls]

    big, tls = run(scenario())
    assert isinstance(big.outcomes[0], PermFailed) and big.outcomes[0].reply.enhanced == "5.3.4"
    assert isinstance(tls.outcomes[0], PermFailed) and tls.outcomes[0].reply.enhanced == "5.7.30"
    assert not any(c.startswith(b"MAIL") for c in script.commands)


def test_malformed_reply_is_a_temporary_failure() -> None:
    script = Script(mail=b"hello there\r\n")

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            return await send_once(port, [BOB])

    result = run(scenario())
    assert result.outcomes == (TempFailed(Reply(451, "4.5.0", "Protocol error from the server")),)


def test_required_tls_without_starttls_is_a_policy_failure() -> None:
    script = Script()

    async def scenario() -> None:
        async with serving(script.handle) as port:
            await ClientSession.open(options(port, tls_mode=TlsMode.REQUIRED))

    with pytest.raises(DeliveryError) as info:
        run(scenario())
    assert info.value.stage == "tls" and info.value.tls_policy
    assert script.commands[-1] == b"QUIT\r\n" or not script.commands[-1].startswith(b"MAIL")


def test_auth_never_over_clear_text() -> None:
    script = Script(ehlo=b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n")

    async def scenario() -> None:
        async with serving(script.handle) as port:
            await ClientSession.open(options(port, auth=("alice", "secret")))

    with pytest.raises(DeliveryError) as info:
        run(scenario())
    assert info.value.stage == "auth"
    assert not any(c.startswith(b"AUTH") for c in script.commands)


def test_421_to_ehlo_names_the_hello_stage() -> None:
    script = Script(ehlo=b"421 4.7.0 Too many connections\r\n")

    async def scenario() -> None:
        async with serving(script.handle) as port:
            await ClientSession.open(options(port))

    with pytest.raises(DeliveryError) as info:
        run(scenario())
    assert info.value.stage == "hello" and not info.value.permanent


def test_unreadable_body_file_defers_without_ending_the_message(tmp_path: Path) -> None:
    script = Script()
    missing = QueuedMessage("Q3", ALICE, 0.0, str(tmp_path / "gone"), 10)

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            result = await session.send(ALICE, [BOB], body_from_message(missing))
            await session.close()
            return result

    result = run(scenario())
    assert result.outcomes == (TempFailed(Reply(451, "4.3.0", "Local error reading the message")),)
    assert script.bodies == []


@dataclass
class WithheldRset(Script):
    """Answers RSET only once the next command is in: a client that waits for that reply
    before it sends MAIL (a round trip per reused message) stalls here."""

    async def _answer(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        if line.strip().upper() != b"RSET":
            return await super()._answer(line, reader, writer)
        following = await reader.readline()
        self.commands.append(following)
        rest = await super()._answer(following, reader, writer)
        return None if rest is None else b"250 2.0.0 Ok\r\n" + rest


def test_reused_connection_sends_its_rset_with_the_next_mail() -> None:
    # RFC 2920 §3.1: RSET need not end a command group; the reset costs no round trip.
    script = WithheldRset()

    async def scenario() -> list[SendResult]:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port, command_timeout=5.0))
            results = []
            for n in range(3):
                if n:
                    await session.reset()  # what the pool does before each reuse
                results.append(await session.send(ALICE, [BOB], BytesBody(b"hi\r\n")))
            await session.close()
            return results

    results = run(scenario())
    assert all(isinstance(o, Delivered) for r in results for o in r.outcomes)
    verbs = [c.split(b" ", 1)[0].strip().split(b":")[0] for c in script.commands]
    # Each reuse: its RSET right before its MAIL, answered only after the MAIL came.
    assert verbs == [
        b"EHLO",
        *[b"MAIL", b"RCPT", b"DATA"],
        *[b"RSET", b"MAIL", b"RCPT", b"DATA"] * 2,
        b"QUIT",
    ]


def test_reused_connection_closed_by_the_peer_is_stale() -> None:
    # The peer hung up while the connection was idle: nothing of the next message reached
    # it, so the courier may hand it to a new connection (SendResult.stale).
    closed = asyncio.Event()

    async def hang_up_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = Script()
        writer.write(script.greeting)
        while line := await reader.readline():
            reply = await script._answer(line, reader, writer)
            assert reply is not None
            writer.write(reply)
            await writer.drain()
            if reply == script.dot:
                break
        writer.close()
        closed.set()

    async def scenario() -> tuple[SendResult, SendResult, bool]:
        async with serving(hang_up_after_one) as port:
            session = await ClientSession.open(options(port, command_timeout=5.0))
            first = await session.send(ALICE, [BOB], BytesBody(b"hi\r\n"))
            await closed.wait()
            await session.reset()
            second = await session.send(ALICE, [BOB], BytesBody(b"hi\r\n"))
            return first, second, session.usable

    first, second, usable = run(scenario())
    assert isinstance(first.outcomes[0], Delivered) and not first.stale
    assert second.stale and isinstance(second.outcomes[0], TempFailed) and not usable


def test_a_small_message_goes_out_in_one_write(tmp_path: Path) -> None:
    # The stored prefix, the body and the end of data: one write (a system call each, and a
    # wake-up at the peer), not three.
    script = Script()
    queued = QueuedMessage("Q3", ALICE, 0.0, "", 6, prefix=b"Received: x\r\n", body=b"hello\r\n")
    writes: list[bytes] = []

    async def scenario() -> SendResult:
        async with serving(script.handle) as port:
            session = await ClientSession.open(options(port))
            real = session._write

            async def recording(data: bytes, seconds: float) -> None:
                writes.append(data)
                await real(data, seconds)

            session._write = recording  # type: ignore[method-assign]
            try:
                return await session.send(ALICE, [BOB], body_from_message(queued))
            finally:
                await session.close()

    result = run(scenario())
    assert isinstance(result.outcomes[0], Delivered)
    assert writes[1] == b"Received: x\r\nhello\r\n.\r\n"  # after MAIL+RCPT+DATA
    assert script.bodies == [b"Received: x\r\nhello\r\n.\r\n"]
