"""The first end-of-message steps without a socket (intake/incoming.py): the loop check, the
header section judged against the sender, our forged Authentication-Results removed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from hato.directory.resolver import NotLocal, Resolution
from hato.intake.context import IntakeContext
from hato.intake.incoming import Incoming
from hato.model import Address, Reply, Role
from hato.queue import BodyWriter, Queue
from hato.smtp import ServerSettings
from kit.clock import FakeClock

ALICE = Address.parse("alice@example.org")


class NoBook:
    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return NotLocal()

    def owns(self, user: Address, address: Address) -> bool:
        return user == address

    def is_local_domain(self, domain: str) -> bool:
        return False


@asynccontextmanager
async def _context(tmp_path: Path) -> AsyncIterator[IntakeContext]:
    """An mx door's intake context over a queue in `tmp_path`, hop limit 3."""
    clock = FakeClock(1_800_000_000.0)
    queue = await Queue.open(tmp_path / "q", clock=clock, node_id="n", free_space=lambda _: 1 << 40)
    try:
        settings = ServerSettings(hostname="mx.example.org")
        yield IntakeContext(role=Role.MX, settings=settings, queue=queue, resolver=NoBook(),
                            clock=clock, hop_limit=3)  # fmt: skip
    finally:
        await queue.close()


def judged(
    tmp_path: Path, message: bytes, *, user: Address | None = None
) -> tuple[Reply | None, bytes]:
    """What `judge` answers for `message`, and what the body then holds."""

    async def scenario() -> tuple[Reply | None, bytes]:
        async with _context(tmp_path) as ctx:
            incoming = Incoming(ctx, keyed=False, authserv_id="mx.example.org")
            for at in range(0, len(message), 7):  # any chunking gives the same answer
                incoming.feed(message[at : at + 7])
            incoming.release()
            answer = incoming.judge(ctx, user, lambda a: user is not None and a == user, "t")
            if isinstance(answer, Reply):
                return answer, b""
            assert isinstance(incoming.body, BodyWriter)
            body = incoming.body.peek_inline()
            incoming.discard()
            return answer, body

    return asyncio.run(scenario())


def test_a_message_past_the_hop_limit_is_refused_as_a_loop(tmp_path: Path) -> None:
    received = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n" * 4
    answer, _ = judged(tmp_path, received + b"From: <x@remote.test>\r\n\r\nhi\r\n")
    assert isinstance(answer, Reply) and answer.enhanced == "5.4.6"  # RFC 3463 X.4.6


def test_after_auth_a_from_the_user_does_not_own_is_refused(tmp_path: Path) -> None:
    answer, _ = judged(tmp_path, b"From: <bob@example.org>\r\n\r\nhi\r\n", user=ALICE)
    assert isinstance(answer, Reply) and answer.code == 553


def test_our_forged_results_are_removed(tmp_path: Path) -> None:
    message = (
        b"Authentication-Results: mx.example.org; dkim=pass\r\n"
        b"From: <alice@example.org>\r\n\r\nhi\r\n"
    )
    answer, body = judged(tmp_path, message, user=ALICE)
    assert answer is None
    assert body == b"From: <alice@example.org>\r\n\r\nhi\r\n"


def test_a_clients_return_path_content_length_and_bcc_are_not_stored(tmp_path: Path) -> None:
    message = (
        b"Return-Path: <forged@evil.test>\r\nBcc: <hidden@example.org>\r\n"
        b"Content-Length: 4\r\nFrom: <alice@example.org>\r\n\r\nhi\r\n"
    )
    answer, body = judged(tmp_path, message, user=ALICE)
    assert answer is None
    assert body == b"From: <alice@example.org>\r\n\r\nhi\r\n"


class Refusing:
    """Stands for the header filter, capture and hop count once they are done: fed nothing."""

    def feed(self, data: bytes) -> bytes:
        raise AssertionError(f"fed {data!r} after the header section")


def test_past_the_header_section_a_chunk_goes_into_the_body_alone(tmp_path: Path) -> None:
    """Once the filter, the capture and the hop count have all seen the end of the header
    section, the body's chunks go straight into the body (issue 15: most reads)."""

    async def scenario() -> bytes:
        async with _context(tmp_path) as ctx:
            incoming = Incoming(ctx, keyed=False, authserv_id="mx.example.org")
            assert incoming.feed(b"Received: from a by b; x\r\nFrom: <x@r.test>\r\n") == b""
            assert incoming.feed(b"\r\nfirst line\r\n") == (
                b"Received: from a by b; x\r\nFrom: <x@r.test>\r\n\r\nfirst line\r\n"
            )
            incoming.filter = incoming.headers = incoming.trace = Refusing()  # type: ignore[assignment]
            assert incoming.feed(b"Received: in the body, no header\r\n") == (
                b"Received: in the body, no header\r\n"
            )
            assert isinstance(incoming.body, BodyWriter)
            body = incoming.body.peek_inline()
            incoming.discard()
            return body

    assert asyncio.run(scenario()) == (
        b"Received: from a by b; x\r\nFrom: <x@r.test>\r\n\r\nfirst line\r\n"
        b"Received: in the body, no header\r\n"
    )
