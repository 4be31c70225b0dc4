"""intake/rekey.py: a queued plaintext copy whose local recipient has a key by now reaches
the local courier only as that recipient's encrypted copy; an encrypted one, and the rows
without a key, pass as they are; a key failure under DEFER leaves the row to wait."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hato.crypto import FailurePolicy, PublicKey, encrypt_message, parse_public_key
from hato.intake.rekey import KeyedDelivery
from hato.model import Address, QueuedMessage, QueuedRecipient
from hato.model.outcome import Delivered, Outcome, TempFailed
from hato.model.storeerror import StoreError
from hato.queue import Queue
from kit.clock import FakeClock
from kit.cryptokeys import NOW, make_cert

CAROL = Address.parse("carol@example.org")  # has a key
DAVE = Address.parse("dave@example.org")  # has none
SECRET = b"Zq7xK3-rekey"
PLAIN = b"From: <bob@example.net>\r\nSubject: " + SECRET + b"\r\n\r\nThe plan: " + SECRET + b"\r\n"


class Keys:
    def __init__(self, key: PublicKey) -> None:
        self.key = key
        self.reads: list[set[Address]] = []  # what each `with_keys` was asked

    def get(self, address: Address) -> PublicKey | None:
        return self.key if address == CAROL else None

    def with_keys(self, addresses: Collection[Address]) -> set[Address]:
        self.reads.append(set(addresses))
        return {a for a in addresses if a == CAROL}

    def policy(self, address: Address) -> FailurePolicy:
        return FailurePolicy.DEFER


class Recording:
    """The local courier: what it was given to write."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[Address, ...]]] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        body = message.body
        if body is None:  # a big copy: a file (not committed, never fsynced)
            body = await asyncio.to_thread(Path(message.body_path).read_bytes)
        assert len(body) == message.size
        self.got.append((message.prefix + body, tuple(r.address for r in recipients)))
        return [Delivered() for _ in recipients]


def _rows() -> list[QueuedRecipient]:
    return [QueuedRecipient(1, DAVE, DAVE), QueuedRecipient(2, CAROL, CAROL)]


@contextlib.asynccontextmanager
async def _queue(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Queue]:
    """A queue in `tmp_path` (the copies are scratch bodies beside it), closed after."""
    queue = await Queue.open(tmp_path / "q", clock=clock, node_id="n", free_space=lambda _: 1 << 40)
    try:
        yield queue
    finally:
        await queue.close()


def _plain(n: int) -> QueuedMessage:
    """Queued message Qn: PLAIN, inline, no prefix."""
    return QueuedMessage(f"Q{n}", None, 0.0, "", len(PLAIN), b"", {}, PLAIN)


def _run(
    tmp_path: Path, keys: Keys, body: bytes, at: float, *, in_file: bool = False
) -> tuple[Recording, list[Outcome]]:
    async def scenario() -> tuple[Recording, list[Outcome]]:
        clock = FakeClock(at)
        async with _queue(tmp_path, clock) as queue:
            local = Recording()
            path = ""
            inline_body: bytes | None = body
            if in_file:  # as the queue holds a body over 64 KiB
                (tmp_path / "Q1.body").write_bytes(body)
                path, inline_body = str(tmp_path / "Q1.body"), None
            prefix = b"Received: x\r\n"
            message = QueuedMessage("Q1", None, at, path, len(body), prefix, {}, inline_body)
            outcomes = await KeyedDelivery(local, keys, queue, clock).deliver(message, _rows())
            assert os.listdir(queue.messages_dir) == []  # copies are never committed: gone
            return local, outcomes

    return asyncio.run(scenario())


def _key() -> PublicKey:
    return parse_public_key(make_cert(rsa.generate_private_key(65537, 2048)).cert_pem, CAROL, NOW)


@pytest.mark.parametrize("padding", [0, 300_000], ids=["inline", "file-and-helper"])
def test_a_keyed_row_gets_its_encrypted_copy_the_other_the_queued_one(
    tmp_path: Path, padding: int
) -> None:
    sent = PLAIN + b"x" * padding + b"\r\n"
    local, outcomes = _run(tmp_path, Keys(_key()), sent, NOW.timestamp(), in_file=bool(padding))
    assert outcomes == [Delivered(), Delivered()]
    (dave, rows_d), (carol, rows_c) = local.got
    assert rows_d == (DAVE,) and dave == b"Received: x\r\n" + sent
    assert rows_c == (CAROL,) and b"application/pkcs7-mime" in carol
    assert SECRET not in carol and b"Received: x\r\n" in carol  # trace kept outside
    assert [
        p for p in (tmp_path / "q").rglob("*") if p.is_file() and SECRET in p.read_bytes()
    ] == []


def test_an_encrypted_message_passes_as_it_is(tmp_path: Path) -> None:
    key = _key()
    sealed = encrypt_message(PLAIN, key)
    local, outcomes = _run(tmp_path, Keys(key), sealed, NOW.timestamp())
    assert outcomes == [Delivered(), Delivered()]
    assert local.got == [(b"Received: x\r\n" + sealed, (DAVE, CAROL))]


@pytest.mark.parametrize("in_file", [False, True])
def test_an_encryption_label_on_plaintext_is_not_enough(tmp_path: Path, in_file: bool) -> None:
    # Red team 2026-12-08: the label alone let a plaintext copy through to a keyed mailbox.
    label = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
    sent = label + PLAIN
    local, outcomes = _run(tmp_path, Keys(_key()), sent, NOW.timestamp(), in_file=in_file)
    assert outcomes == [Delivered(), Delivered()]
    (_, rows_d), (carol, rows_c) = local.got
    assert rows_d == (DAVE,) and rows_c == (CAROL,)
    assert SECRET not in carol and b"smime-type=enveloped-data" in carol


def test_an_expired_key_under_defer_leaves_the_row_waiting(tmp_path: Path) -> None:
    later = (NOW + dt.timedelta(days=400)).timestamp()  # past the certificate's 30 days
    local, outcomes = _run(tmp_path, Keys(_key()), PLAIN, later)
    assert outcomes[0] == Delivered() and isinstance(outcomes[1], TempFailed)
    assert outcomes[1].reply.enhanced == "4.7.5"
    assert local.got == [(b"Received: x\r\n" + PLAIN, (DAVE,))]


def test_the_deliveries_of_one_batch_ask_the_key_store_once(tmp_path: Path) -> None:
    """Issue 16: one read for all the rows a runner batch starts together (on PostgreSQL a
    "no key" is never kept: a read a delivery was a round trip each); the next batch asks
    again, so a key imported between batches is seen."""
    keys = Keys(_key())
    erin = Address.parse("erin@example.org")

    async def scenario() -> list[list[Outcome]]:
        clock = FakeClock(NOW.timestamp())
        async with _queue(tmp_path, clock) as queue:
            courier = KeyedDelivery(Recording(), keys, queue, clock)

            def one(n: int, rcpt: Address) -> Awaitable[list[Outcome]]:
                message = _plain(n)
                return courier.deliver(message, [QueuedRecipient(n, rcpt, rcpt)])

            batch = await asyncio.gather(one(1, DAVE), one(2, erin), one(3, CAROL))
            assert keys.reads == [{DAVE, erin, CAROL}]
            keys.reads.clear()
            again = await asyncio.gather(one(4, DAVE), one(5, erin))
            assert keys.reads == [{DAVE, erin}]  # asked again: nothing kept between batches
            return [*batch, *again]

    assert asyncio.run(scenario()) == [[Delivered()]] * 5


def test_on_postgresql_the_deliveries_during_a_read_join_the_next_one(tmp_path: Path) -> None:
    """`in_thread` (the shared store): the read runs in a worker thread; the deliveries that
    start while it runs wait for one more read, started after they asked (so a key committed
    before they began is seen), not one each."""
    entered, release = threading.Event(), threading.Event()

    class Slow(Keys):
        def with_keys(self, addresses: Collection[Address]) -> set[Address]:
            if not self.reads:  # the first read waits until the test lets it go
                entered.set()
                release.wait(timeout=60)
            return super().with_keys(addresses)

    keys = Slow(_key())
    erin = Address.parse("erin@example.org")

    async def scenario() -> list[list[Outcome]]:
        clock = FakeClock(NOW.timestamp())
        async with _queue(tmp_path, clock) as queue:
            courier = KeyedDelivery(Recording(), keys, queue, clock, in_thread=True)

            def one(n: int, rcpt: Address) -> asyncio.Task[list[Outcome]]:
                message = _plain(n)
                return asyncio.create_task(
                    courier.deliver(message, [QueuedRecipient(n, rcpt, rcpt)])
                )

            first = one(1, DAVE)
            await asyncio.to_thread(entered.wait, 60)  # the first read is in flight
            later = [one(2, erin), one(3, DAVE)]
            await asyncio.sleep(0)  # they have joined the next read (one turn)
            release.set()
            return [await first, *[await t for t in later]]

    assert asyncio.run(scenario()) == [[Delivered()]] * 3
    assert keys.reads == [{DAVE}, {erin, DAVE}]


def test_a_failed_read_fails_every_delivery_of_the_batch(tmp_path: Path) -> None:
    """The store's error reaches each delivery (the runner logs courier-error and retries)."""

    class Down(Keys):
        def with_keys(self, addresses: Collection[Address]) -> set[Address]:
            raise StoreError("the PostgreSQL store failed: down")

    async def scenario() -> list[BaseException | list[Outcome]]:
        clock = FakeClock(NOW.timestamp())
        async with _queue(tmp_path, clock) as queue:
            courier = KeyedDelivery(Recording(), Down(_key()), queue, clock)
            message = _plain(1)
            rows = [[QueuedRecipient(n, DAVE, DAVE)] for n in (1, 2)]
            return await asyncio.gather(
                *(courier.deliver(message, r) for r in rows), return_exceptions=True
            )

    assert [type(r) for r in asyncio.run(scenario())] == [StoreError, StoreError]
