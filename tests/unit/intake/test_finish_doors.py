"""The end-of-message steps of every door without a socket (intake/finish.py): which steps each
door takes, decided in one place, and the DKIM signature that local submission and the server's
own notices now carry, as authenticated submission's does (issue 11 "One way in")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import dkim  # type: ignore[import-untyped]
import pytest

from hato.authcheck import DkimSigner
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key
from hato.authcheck.offload import NEARBY_LIMIT
from hato.crypto import KeyLookup, SealedScratch
from hato.directory.resolver import Local, NotLocal, Resolution
from hato.intake import finish
from hato.intake.context import IntakeContext
from hato.intake.finish import Door, Steps, Submitted, end_of_message, open_capture, steps
from hato.intake.inbound import InboundChecker
from hato.intake.miltercheck import MilterFilter
from hato.intake.notices import KeyedCommitter
from hato.intake.signing import OutboundSigner, split_message
from hato.intake.spamcheck import SpamFilter, Spooled
from hato.intake.transaction import NO_DSN, Transaction
from hato.model import Address, Reply, Role
from hato.model.queuestore import Pending
from hato.queue import AUTH_PARAM, SPF_PARAM, Notifier, Queue, QueueStore
from hato.queue.dsn import Action, RecipientReport
from hato.queue.schedule import Schedule
from hato.smtp import ServerSettings
from kit.clock import FakeClock


class Book:
    """example.org is ours (every address its own mailbox); anything else is remote."""

    def resolve(self, address: Address, *, wildcards: bool = True) -> Resolution:
        return Local((address,), ()) if address.domain == "example.org" else NotLocal()

    def owns(self, user: Address, address: Address) -> bool:
        return user == address

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.org"


CLOCK = FakeClock(1_700_000_000.0)  # the signature's t=, in the past of any test run
PEM, RECORD = generate_key(DkimAlgorithm.RSA_SHA256, rsa_bits=1024)
SIGNER = OutboundSigner(
    {"example.org": DkimSigner("example.org", "s1", load_signing_key(PEM), CLOCK)}
)
ALICE = Address.parse("alice@example.org")
FAR = Address.parse("carol@remote.test")
MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: carol@remote.test\r\nSubject: hi\r\n"
    b"Message-ID: <1@example.org>\r\n\r\nhello\r\n"
)


def _dns(name: bytes, timeout: int = 5) -> bytes:
    return RECORD.encode() if name == b"s1._domainkey.example.org." else b""


def _context(queue: QueueStore, **rooms: object) -> IntakeContext:
    return IntakeContext(
        role=Role.SUBMISSION,
        settings=ServerSettings(hostname="mx.example.org"),
        queue=queue,
        resolver=Book(),
        clock=CLOCK,
        postmaster_domain="example.org",
        **rooms,  # type: ignore[arg-type]
    )


def _queued(tmp_path: Path, run: Callable[[Queue], Awaitable[object]]) -> tuple[object, Pending]:
    async def scenario() -> tuple[object, Pending]:
        queue = await Queue.open(
            tmp_path / "q", clock=CLOCK, node_id="n", free_space=lambda _: 1 << 40
        )
        try:
            result = await run(queue)
            (pending,) = await queue.wait_fresh()
            return result, pending
        finally:
            await queue.close()

    return asyncio.run(scenario())


def _stored(pending: Pending, body: bytes) -> bytes:
    return pending.message.prefix + body


@pytest.mark.parametrize(
    ("door", "expected"),
    [
        (Door.MX, Steps(check=True, sign=False, spam=True, milters=True)),
        (Door.SUBMISSION, Steps(check=False, sign=True, spam=True, milters=True)),
        (Door.LOCAL, Steps(check=False, sign=True, spam=True, milters=True)),
        (Door.NOTICE, Steps(check=False, sign=True, spam=False, milters=False)),
        (Door.OUTSIDE_NOTICE, Steps(check=False, sign=False, spam=False, milters=False)),
    ],
)
def test_each_door_takes_its_steps_decided_in_one_place(door: Door, expected: Steps) -> None:
    ctx = _context(
        cast(QueueStore, None),
        signer=SIGNER,
        inbound=cast(InboundChecker, object()),
        spam=cast(SpamFilter, object()),
        milters=(cast(MilterFilter, object()),),
    )
    assert steps(ctx, door) == expected
    # Without the rooms, no door takes the steps they make.
    assert steps(_context(cast(QueueStore, None)), door) == Steps(False, False, False, False)


def test_local_submission_is_dkim_signed_by_its_authors_domain(tmp_path: Path) -> None:
    async def run(queue: Queue) -> list[str] | Reply:
        ctx = _context(queue, signer=SIGNER)
        tx = Transaction(ALICE, {"AUTH": "uid:1000"}, local=True)
        tx.add((FAR,), FAR, NO_DSN)
        capture = open_capture(ctx, Door.LOCAL)
        assert capture is not None
        capture.feed(MESSAGE)
        body = queue.new_body()
        body.write(MESSAGE)
        facts = Submitted("uid:1000", "", "", None, ALICE, tx.params, Door.LOCAL)
        return await end_of_message(ctx, tx, body, facts, captured=capture.result(),
                                    trace=lambda _: b"", direct=False)  # fmt: skip

    ids, pending = _queued(tmp_path, run)
    assert isinstance(ids, list) and len(ids) == 1
    stored = _stored(pending, MESSAGE)
    assert stored.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"d=example.org" in pending.message.prefix
    assert dkim.verify(stored, dnsfunc=_dns)
    assert pending.message.params["AUTH"] == "uid:1000"  # the door's own, unchanged


def test_an_unauthenticated_message_is_not_signed(tmp_path: Path) -> None:
    async def run(queue: Queue) -> list[str] | Reply:
        ctx = _context(queue, signer=SIGNER)
        assert open_capture(ctx, Door.MX) is None
        tx = Transaction(ALICE)
        tx.add((FAR,), FAR, NO_DSN)
        body = queue.new_body()
        body.write(MESSAGE)
        facts = Submitted("s", "192.0.2.1", "client", None, ALICE, {}, Door.MX)
        return await end_of_message(ctx, tx, body, facts, captured=MESSAGE,
                                    trace=lambda _: b"", direct=False)  # fmt: skip

    _, pending = _queued(tmp_path, run)
    assert b"DKIM-Signature" not in pending.message.prefix


def _notice(hostname: str) -> bytes:
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        "To: carol@remote.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nyour mail could not be delivered\r\n"
    ).encode()


@pytest.mark.parametrize("hostname", ["mx.example.org", "example.org"])
def test_a_notice_is_signed_by_the_domain_of_our_hostname(tmp_path: Path, hostname: str) -> None:
    data = _notice(hostname)

    async def run(queue: Queue) -> str:
        committer = KeyedCommitter(
            queue, cast(KeyLookup, _NoKeys()), CLOCK, Book(), hostname=hostname, signer=SIGNER
        )
        return await committer(
            queue.new_body(), data, recipients=[(FAR, FAR)], params={}, ours=True
        )

    queue_id, pending = _queued(tmp_path, run)
    assert queue_id == pending.message.queue_id and pending.message.mail_from is None
    stored = _stored(pending, data)
    assert b"d=example.org" in pending.message.prefix
    assert dkim.verify(stored, dnsfunc=_dns)


def test_a_notice_from_a_hostname_outside_our_domains_is_not_signed(tmp_path: Path) -> None:
    data = _notice("mail.hoster.test")

    async def run(queue: Queue) -> str:
        committer = KeyedCommitter(
            queue, cast(KeyLookup, _NoKeys()), CLOCK, Book(), hostname="mail.hoster.test",
            signer=SIGNER,
        )  # fmt: skip
        return await committer(
            queue.new_body(), data, recipients=[(FAR, FAR)], params={}, ours=True
        )

    _, pending = _queued(tmp_path, run)
    assert b"DKIM-Signature" not in pending.message.prefix


@pytest.mark.parametrize(
    ("params", "signed"),
    [
        ({AUTH_PARAM: "alice@example.org"}, True),  # authenticated submission
        ({AUTH_PARAM: "local"}, True),  # local submission (hato-sendmail, the maildrop)
        ({}, False),  # from outside: the DSN returns content a stranger chose
        ({SPF_PARAM: "pass"}, False),  # a checked sender is still not our user
    ],
)
def test_a_dsn_is_signed_only_about_our_own_users_mail(
    tmp_path: Path, params: dict[str, str | None], signed: bool
) -> None:
    # queue/bounce.py "Signing": the Notifier tells the committer whether the original carried
    # AUTH_PARAM; RFC 6376 §8, we do not vouch for content we do not control.
    original = MESSAGE + b"Click here: https://phish.test/\r\n"

    async def scenario() -> Pending:
        queue = await Queue.open(
            tmp_path / "q", clock=CLOCK, node_id="n", free_space=lambda _: 1 << 40
        )
        try:
            body = queue.new_body()
            body.write(original)
            await queue.commit(
                body, mail_from=FAR, recipients=[(ALICE, ALICE)], prefix=b"", params=params
            )
            (first,) = await queue.wait_fresh()
            committer = KeyedCommitter(
                queue, cast(KeyLookup, _NoKeys()), CLOCK, Book(), hostname="mx.example.org",
                signer=SIGNER,
            )  # fmt: skip
            notifier = Notifier(queue, hostname="mx.example.org", clock=CLOCK,
                                schedule=Schedule(), committer=committer)  # fmt: skip
            failed = Reply(552, "5.2.2", "over quota")
            (rcpt,) = first.recipients
            await notifier.send(
                first.message, [RecipientReport(rcpt, Action.FAILED, failed, None, CLOCK.now())]
            )
            (notice,) = await queue.wait_fresh()
            return notice
        finally:
            await queue.close()

    notice = asyncio.run(scenario())
    assert notice.message.mail_from is None
    assert notice.recipients[0].address == FAR
    assert (b"DKIM-Signature" in notice.message.prefix) is signed
    if signed:
        data = notice.message.body
        if data is None:
            data = Path(notice.message.body_path).read_bytes()
        assert dkim.verify(notice.message.prefix + data, dnsfunc=_dns)


def test_a_users_mail_is_signed_only_by_its_own_domain_not_a_parent() -> None:
    sub = MESSAGE.replace(b"alice@example.org", b"alice@sub.example.org")
    assert SIGNER.sign(sub) == b""
    assert SIGNER.sign(sub, parents=True).startswith(b"DKIM-Signature:")


class _NoKeys:
    """Nobody has a key."""

    def get(self, address: Address) -> None:
        return None

    def policy(self, address: Address) -> object:
        raise AssertionError("no key, no policy")


NO_BODY = cast(Spooled, None)  # unread: the message did not change


def test_a_small_message_is_signed_on_the_loop_a_large_one_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to NEARBY_LIMIT the signature is made where it is asked for (no thread hand-off:
    the RSA signature holds the GIL anyway); a larger body is hashed in a thread."""
    threaded: list[int] = []

    async def to_thread(work: Callable[[], bytes]) -> bytes:
        threaded.append(1)
        return work()

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    ctx = _context(cast(QueueStore, None), signer=SIGNER)
    facts = Submitted("alice@example.org", "", "", None, ALICE, {}, Door.SUBMISSION)
    large = MESSAGE + (b"x" * 78 + b"\r\n") * (NEARBY_LIMIT // 80 + 1)
    for message, hand_offs in ((MESSAGE, 0), (large, 1)):
        signature = asyncio.run(finish.sign(ctx, facts, message, b"", NO_BODY, message, ALICE))
        assert dkim.verify(signature + message, dnsfunc=_dns)
        assert len(threaded) == hand_offs


def test_an_edited_spooled_message_is_signed_as_it_leaves(tmp_path: Path) -> None:
    """After a milter's edit the message to sign is the new spool body (here a keyed
    message's encrypted scratch) under our header lines: read back and hashed as it is
    read, and the signature verifies over exactly what goes out."""
    ctx = _context(cast(QueueStore, None), signer=SIGNER)
    facts = Submitted("alice@example.org", "", "", None, ALICE, {}, Door.SUBMISSION)
    edited = MESSAGE.replace(b"Subject: hi", b"Subject: changed") + b"-- \r\ndisclaimer\r\n"
    body = SealedScratch(str(tmp_path))
    body.write(edited)
    prefix = b"X-Milter: seen\r\n"
    signature = asyncio.run(finish.sign(ctx, facts, MESSAGE, prefix, body, None, ALICE))
    assert dkim.verify(signature + prefix + edited, dnsfunc=_dns)
    assert not dkim.verify(signature + prefix + MESSAGE, dnsfunc=_dns)  # not the one received


LIST_PEM, LIST_RECORD = generate_key(DkimAlgorithm.RSA_SHA256, rsa_bits=1024)
TWO_DOMAINS = OutboundSigner(
    {
        "example.org": DkimSigner("example.org", "s1", load_signing_key(PEM), CLOCK),
        "list.test": DkimSigner("list.test", "s1", load_signing_key(LIST_PEM), CLOCK),
    }
)


def _two_domains_dns(name: bytes, timeout: int = 5) -> bytes:
    return LIST_RECORD.encode() if name == b"s1._domainkey.list.test." else _dns(name)


@pytest.mark.parametrize("where", ["body", "prefix"])
def test_a_from_a_milter_rewrote_is_signed_by_its_new_domain(tmp_path: Path, where: str) -> None:
    """The signing domain is read from the header as it leaves, after the milters: a From
    changed (SMFIR_CHGHEADER: a new spool body) or added (SMFIR_ADDHEADER: our prefix) to
    another domain we sign for gets that domain's signature, aligned for DMARC (RFC 7489
    §3.1.1), not the one of the From the user sent."""
    ctx = _context(cast(QueueStore, None), signer=TWO_DOMAINS)
    facts = Submitted("alice@example.org", "", "", None, ALICE, {}, Door.SUBMISSION)
    team = b"From: Team <team@list.test>\r\n"
    if where == "body":
        edited, prefix = MESSAGE.replace(b"From: Alice <alice@example.org>\r\n", team), b""
    else:
        edited, prefix = MESSAGE.replace(b"From: Alice <alice@example.org>\r\n", b""), team
    body = SealedScratch(str(tmp_path))
    body.write(edited)
    signature = asyncio.run(finish.sign(ctx, facts, MESSAGE, prefix, body, None, ALICE))
    assert b"d=list.test;" in signature, signature
    assert dkim.verify(signature + prefix + edited, dnsfunc=_two_domains_dns)


def test_a_from_rewritten_to_a_domain_without_our_key_is_not_signed_by_it() -> None:
    """A From of a domain we hold no key for never gets its signature: the envelope
    sender's domain signs if it is ours, else nothing does."""
    stranger = MESSAGE.replace(b"alice@example.org", b"someone@elsewhere.test")
    signed = TWO_DOMAINS.sign(stranger, sender=ALICE)
    assert b"d=example.org;" in signed
    assert TWO_DOMAINS.sign(stranger) == b""
    assert TWO_DOMAINS.sign(stranger, sender=FAR) == b""


@pytest.mark.parametrize(
    ("prefix", "chunks", "head", "rest"),
    [
        (b"A: 1\r\n", [b"B: 2\r\n\r", b"\nbody\r\n"], b"A: 1\r\nB: 2\r\n", b"body\r\n"),
        (b"", [b"\r\nbody\r\n"], b"", b"body\r\n"),  # no header section
        (b"A: 1\r\n", [b"\r\nbody"], b"A: 1\r\n", b"body"),  # only our lines
        (b"", [b"B: 2\r\n"], b"B: 2\r\n", b""),  # no body
    ],
)
def test_split_message_finds_the_empty_line_across_chunks(
    prefix: bytes, chunks: list[bytes], head: bytes, rest: bytes
) -> None:
    found, body = split_message(prefix, iter(chunks))
    assert (found, b"".join(body)) == (head, rest)
