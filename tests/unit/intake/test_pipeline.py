"""The intake pipeline without a socket: the MAIL and RCPT steps over a Transaction, and the
commit of the copies into a real queue on disk (intake/recipients.py, intake/message.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import threading
from pathlib import Path
from typing import cast

import pytest

from hato.crypto import DEFER_REPLY, FailurePolicy, KeyKind, PublicKey
from hato.delivery import MaildirCourier
from hato.directory.resolver import Local, NotLocal, Resolution, Unknown
from hato.intake.context import IntakeContext
from hato.intake.direct import DirectDelivery
from hato.intake.message import commit
from hato.intake.recipients import add_recipient, begin, recipient, resolve_recipient, settle
from hato.intake.transaction import NO_DSN, Transaction
from hato.model import Address, Notify, RecipientDsn, Reply, Role
from hato.model.queuestore import Pending
from hato.policy import SendLimiter, SendLimitSettings
from hato.queue import BodyWriter, Queue, QueueStore
from hato.smtp import ServerSettings
from kit.clock import FakeClock

ALICE = Address.parse("alice@example.org")
BOB = Address.parse("bob@example.org")
SALES = Address.parse("sales@example.org")  # an alias: alice and bob
FAR = Address.parse("carol@remote.test")
FORWARD = Address.parse("friend@remote.test")


class Book:
    """example.org: alice, bob, and sales@ delivering to both; anything else is remote."""

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        if address.domain != "example.org":
            return NotLocal()
        local = address.local.lower()
        if local == "sales":
            return Local((ALICE, BOB), ())
        if local in ("alice", "bob", "postmaster"):
            return Local((Address(local, "example.org"),), ())
        return Unknown()

    def owns(self, user: Address, address: Address) -> bool:
        return user.local == address.local and address.domain == "example.org"

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"


class Keys:
    """bob has a key; alice's key expired and her policy is DEFER (when `alice_defers`)."""

    def __init__(self, alice_defers: bool = False) -> None:
        self.alice_defers = alice_defers

    def get(self, address: Address) -> PublicKey | None:
        expires = None
        if address == ALICE and self.alice_defers:
            expires = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        elif address != BOB:
            return None
        return PublicKey(KeyKind.OPENPGP, address, b"", "ab" * 20, expires, "test")

    def policy(self, address: Address) -> FailurePolicy:
        return FailurePolicy.DEFER


class NoQueue:
    """The RCPT steps ask the queue only whether it has room."""

    def has_room(self, size_hint: int = 0) -> bool:
        return True


def context(tmp_path: Path, role: Role = Role.SUBMISSION, **kwargs: object) -> IntakeContext:
    return with_queue(cast(QueueStore, NoQueue()), role, **kwargs)


def with_queue(queue: QueueStore, role: Role, **kwargs: object) -> IntakeContext:
    return IntakeContext(
        role=role,
        settings=ServerSettings(hostname="mx.example.org"),
        queue=queue,
        resolver=Book(),
        clock=FakeClock(1_800_000_000.0),
        postmaster_domain="example.org",
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_authenticated_user_may_send_only_as_an_address_it_owns(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert isinstance(begin(ctx, ALICE, user=ALICE), Transaction)
    refused = begin(ctx, BOB, user=ALICE)
    assert isinstance(refused, Reply) and refused.enhanced == "5.7.1"
    assert isinstance(begin(ctx, None, user=ALICE), Transaction)  # the null sender (RFC 5321)


def test_smtputf8_is_kept_and_is_no_local_submission(tmp_path: Path) -> None:
    # RFC 6531 §3.4: the transaction knows SMTPUTF8 was given (its Received says UTF8SMTP...);
    # it was once given as the `local` field (a program on this machine) instead.
    tx = begin(context(tmp_path, role=Role.MX), FAR, user=None, smtputf8=True)
    assert isinstance(tx, Transaction)
    assert tx.smtputf8 and not tx.local


def test_an_alias_expands_to_each_mailbox_once_keeping_the_address_given(tmp_path: Path) -> None:
    ctx = context(tmp_path, role=Role.MX)
    tx = begin(ctx, FAR, user=None)
    assert isinstance(tx, Transaction)
    notify = RecipientDsn(notify=frozenset({Notify.FAILURE}))
    assert recipient(ctx, tx, SALES, notify, session="t") is None
    assert recipient(ctx, tx, BOB, NO_DSN, session="t") is None
    assert tx.recipients == [(ALICE, SALES), (BOB, SALES)]
    assert tx.originals == [SALES, BOB]
    assert tx.dsn[BOB] == notify
    assert tx.rows((BOB,)) == [(BOB, SALES, notify)]


def test_mx_refuses_relaying_and_unknown_users(tmp_path: Path) -> None:
    ctx = context(tmp_path, role=Role.MX)
    tx = Transaction(FAR)
    relay = resolve_recipient(ctx, tx, FAR)
    unknown = resolve_recipient(ctx, tx, Address.parse("nobody@example.org"))
    assert isinstance(relay, Reply) and relay.enhanced == "5.7.1"
    assert isinstance(unknown, Reply) and unknown.enhanced == "5.1.1"


def test_postmaster_at_our_hostname_goes_to_the_first_domains_postmaster(tmp_path: Path) -> None:
    # RFC 5321 §4.5.1: <postmaster> must be accepted.
    ctx = context(tmp_path, role=Role.MX)
    tx = Transaction(FAR)
    given = Address("postmaster", "mx.example.org")
    resolution = resolve_recipient(ctx, tx, given)
    assert resolution == Local((Address("postmaster", "example.org"),), ())


def test_a_keyed_mailbox_behind_an_alias_makes_the_transaction_keyed(tmp_path: Path) -> None:
    ctx = context(tmp_path, role=Role.MX, keys=Keys())
    tx = Transaction(FAR)
    assert recipient(ctx, tx, SALES, NO_DSN, session="t") is None
    assert tx.keyed  # bob, behind sales@, has a key: received into a sealed scratch file


def test_a_key_that_cannot_be_used_under_defer_refuses_the_recipient(tmp_path: Path) -> None:
    ctx = context(tmp_path, role=Role.MX, keys=Keys(alice_defers=True))
    tx = Transaction(FAR)
    assert recipient(ctx, tx, SALES, NO_DSN, session="t") is DEFER_REPLY
    assert tx.recipients == [] and tx.originals == []


def test_the_sending_limit_counts_recipients_and_a_refusal_gives_it_back(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    limiter = SendLimiter(clock, SendLimitSettings(messages_per_hour=5, recipients_per_hour=1))
    ctx = context(tmp_path, limiter=limiter)
    tx = begin(ctx, ALICE, user=ALICE)
    assert isinstance(tx, Transaction) and tx.quota is not None
    assert recipient(ctx, tx, FAR, NO_DSN, session="t") is None
    refused = recipient(ctx, tx, BOB, NO_DSN, session="t")
    assert isinstance(refused, Reply) and refused.code == 451
    settle(ctx, tx.quota, refused)  # no 250: the reservation is given back
    again = begin(ctx, ALICE, user=ALICE)
    assert isinstance(again, Transaction)
    assert recipient(ctx, again, FAR, NO_DSN, session="t") is None


def test_commit_queues_one_copy_with_delivered_to_added_headers_and_received(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[str] | Reply, list[Pending]]:
        clock = FakeClock(1_800_000_000.0)
        queue = await Queue.open(
            tmp_path / "q", clock=clock, node_id="n", free_space=lambda _: 1 << 40
        )
        try:
            ctx = with_queue(queue, Role.MX)
            tx = Transaction(FAR)
            tx.add((BOB,), BOB, NO_DSN)
            tx.add((FORWARD,), SALES, NO_DSN)  # an alias of ours forwarding (RFC 9228)
            body = queue.new_body()
            body.write(b"Subject: hi\r\n\r\nhello\r\n")
            ids = await commit(ctx, tx, body, mail_from=FAR, added=b"X-Added: 1\r\n", params={},
                               trace=lambda qid: f"Received: id {qid}\r\n".encode(),
                               session="t")  # fmt: skip
            return ids, await queue.wait_fresh()
        finally:
            await queue.close()

    ids, (pending,) = asyncio.run(scenario())
    assert isinstance(ids, list) and ids == [pending.message.queue_id]
    assert pending.message.prefix == (
        b"Delivered-To: sales@example.org\r\nX-Added: 1\r\n" + f"Received: id {ids[0]}\r\n".encode()
    )
    assert [r.address for r in pending.recipients] == [BOB, FORWARD]


def test_add_recipient_leaves_the_transaction_unchanged_when_it_refuses(tmp_path: Path) -> None:
    ctx = context(tmp_path, role=Role.MX, keys=Keys(alice_defers=True))
    tx = Transaction(FAR)
    reply = add_recipient(ctx, tx, ALICE, Local((ALICE,), ()), NO_DSN, session="t")
    assert reply is DEFER_REPLY and not tx.keyed and tx.dsn == {}


def _direct_commit(tmp_path: Path, body_size: int) -> tuple[list[str] | Reply, list[str]]:
    """Commit a `body_size`-octet message for alice and bob with direct delivery on (a real
    queue and a real Maildir courier); the ids, and the addresses of the rows then queued."""

    async def scenario() -> list[str] | Reply:
        clock = FakeClock(1_800_000_000.0)
        queue = await Queue.open(
            tmp_path / "q", clock=clock, node_id="n", free_space=lambda _: 1 << 40
        )
        courier = MaildirCourier(tmp_path / "mail", "mx.example.org", clock=clock)
        try:
            direct = DirectDelivery(courier, Book().is_local_domain, clock)
            ctx = with_queue(queue, Role.MX, direct=direct)
            tx = Transaction(FAR)
            tx.add((ALICE, BOB), SALES, NO_DSN)
            body = queue.new_body()
            for start in range(0, body_size, 10_000):  # as DATA comes, chunk by chunk
                body.write(BIG_BODY[start : min(start + 10_000, body_size)])
            return await commit(ctx, tx, body, mail_from=FAR, added=b"", params={},
                                trace=lambda qid: f"Received: id {qid}\r\n".encode(),
                                session="t")  # fmt: skip
        finally:
            courier.close()
            await queue.close()

    ids = asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "q" / "queue.db") as conn:
        queued = [str(a) for (a,) in conn.execute("SELECT address FROM recipients")]
    return ids, queued


BIG_BODY = b"Subject: big\r\n\r\n" + b"0123456789abcdefghijklmnopqrstuvwxyz.\r\n" * 10_000


@pytest.mark.parametrize("size", [100_000, len(BIG_BODY)])  # read once / copied by the kernel
def test_a_big_message_for_our_mailboxes_goes_in_from_its_spool_file_and_is_never_queued(
    tmp_path: Path, size: int
) -> None:
    ids, queued = _direct_commit(tmp_path, size)
    assert isinstance(ids, list) and len(ids) == 1 and queued == []
    for user in ("alice", "bob"):
        (stored,) = (tmp_path / "mail" / "example.org" / user / "new").iterdir()
        data = stored.read_bytes()
        assert data.endswith(f"Received: id {ids[0]}\r\n".encode() + BIG_BODY[:size])
        assert f"Delivered-To: {user}@example.org\r\n".encode() in data
    assert os.listdir(tmp_path / "q" / "messages") == []  # the spool file is gone


def test_the_spool_file_of_a_big_message_delivered_directly_is_removed_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = BodyWriter.discard

    def recording(self: BodyWriter) -> None:
        threads.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(BodyWriter, "discard", recording)
    ids, queued = _direct_commit(tmp_path, len(BIG_BODY))
    assert isinstance(ids, list) and queued == []
    assert threads and threading.main_thread().name not in threads
    assert os.listdir(tmp_path / "q" / "messages") == []


def test_a_big_message_for_a_mailbox_failing_now_is_queued_for_it_alone(tmp_path: Path) -> None:
    (tmp_path / "mail" / "example.org").mkdir(parents=True)
    (tmp_path / "mail" / "example.org" / "bob").write_bytes(b"")  # no Maildir can be made there
    ids, queued = _direct_commit(tmp_path, len(BIG_BODY))
    assert isinstance(ids, list) and len(ids) == 1
    (alice,) = (tmp_path / "mail" / "example.org" / "alice" / "new").iterdir()
    assert alice.read_bytes().endswith(BIG_BODY)
    assert queued == ["bob@example.org"]
    # bob's copy is queued with the whole body in its spool file.
    assert (tmp_path / "q" / "messages" / ids[0]).read_bytes() == BIG_BODY


class ExpiredPlaintext:
    """alice's key expired and her policy is PLAINTEXT: her mail is stored in the clear, marked."""

    def get(self, address: Address) -> PublicKey | None:
        if address != ALICE:
            return None
        expires = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        return PublicKey(KeyKind.OPENPGP, address, b"", "ab" * 20, expires, "test")

    def policy(self, address: Address) -> FailurePolicy:
        return FailurePolicy.PLAINTEXT


def test_mail_for_an_expired_key_under_plaintext_gets_the_warning_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # RCPT found no usable key (the message came in the clear); the commit still marks the
    # copy it stores in the clear and tells the admin (docs/encryption.md).
    async def scenario() -> list[Pending]:
        clock = FakeClock(1_800_000_000.0)
        queue = await Queue.open(
            tmp_path / "q", clock=clock, node_id="n", free_space=lambda _: 1 << 40
        )
        try:
            ctx = with_queue(queue, Role.MX, keys=ExpiredPlaintext())
            tx = Transaction(FAR)
            assert recipient(ctx, tx, ALICE, NO_DSN, session="t") is None
            assert not tx.keyed
            body = queue.new_body()
            body.write(b"Subject: hi\r\n\r\nhello\r\n")
            ids = await commit(ctx, tx, body, mail_from=FAR, added=b"", params={},
                               trace=lambda qid: b"", session="t")  # fmt: skip
            assert isinstance(ids, list)
            return await queue.wait_fresh()
        finally:
            await queue.close()

    with caplog.at_level("INFO"):
        (pending,) = asyncio.run(scenario())
    body = pending.message.body
    assert body is not None and body.startswith(b"X-Hato-Encryption: not encrypted")
    assert body.endswith(b"Subject: hi\r\n\r\nhello\r\n")
    assert "event=key-failure" in caplog.text and "action=stored-in-clear" in caplog.text
