"""SRS in libsrs2's format: forward, reverse, SRS1 for a second forwarder, age and hash checks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path

from hato.delivery.router import RoutingCourier
from hato.directory.resolver import Local, LocalDomain, RecipientResolver, Unknown
from hato.directory.srs import Srs, is_srs, load_key
from hato.model import (
    Address,
    Delivered,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    ReversePath,
)
from kit.clock import FakeClock

DAY = 86_400
NOW = 20_000 * DAY + 3600  # day 20000: 20000 % 1024 = 544 = 17 * 32 + 0 -> "RA"
KEY = b"tops3cr3t"


def test_srs0_is_libsrs2s_format_and_reverses_to_the_sender() -> None:
    srs = Srs(KEY)
    forwarded = srs.forward(Address("dave", "c.test"), "a.test", NOW)
    assert forwarded is not None
    expected = base64.b64encode(hmac.new(KEY, b"rac.testdave", hashlib.sha1).digest())[:4]
    assert str(forwarded) == f"SRS0={expected.decode()}=RA=c.test=dave@a.test"
    assert srs.reverse(forwarded, NOW) == Address("dave", "c.test")
    assert is_srs(forwarded) and not is_srs(Address("srs", "a.test"))


def test_hash_and_stamp_are_compared_without_regard_to_case() -> None:
    srs = Srs(KEY)
    forwarded = srs.forward(Address("Dave", "C.test"), "a.test", NOW)
    assert forwarded is not None
    shouted = Address(forwarded.local.upper(), "A.TEST")
    assert srs.reverse(shouted, NOW) == Address("DAVE", "c.test")


def test_a_wrong_hash_an_old_stamp_or_another_key_is_refused() -> None:
    srs = Srs(KEY)
    forwarded = srs.forward(Address("dave", "c.test"), "a.test", NOW)
    assert forwarded is not None
    assert srs.reverse(forwarded, NOW + 21 * DAY) is not None
    assert srs.reverse(forwarded, NOW + 22 * DAY) is None  # libsrs2's 21 days
    assert Srs(b"other").reverse(forwarded, NOW) is None
    digest, rest = forwarded.local[5:9], forwarded.local[9:]
    forged = "AAAA" if digest.upper() != "AAAA" else "BBBB"
    assert srs.reverse(Address(f"SRS0={forged}{rest}", "a.test"), NOW) is None
    assert srs.reverse(Address("SRS0=abcd=RA=c.test=mallory", "a.test"), NOW) is None
    for junk in ("SRS0=", "SRS0==", "SRS0=x=y", "SRS1=abcd=host", "SRS2=abcd=RA=c=d", "srs0"):
        assert srs.reverse(Address(junk, "a.test"), NOW) is None, junk


def test_a_second_forwarder_writes_srs1_which_reverses_to_the_first_srs0() -> None:
    first, second, third = Srs(b"a-key"), Srs(b"b-key"), Srs(b"c-key")
    srs0 = first.forward(Address("dave", "c.test"), "a.test", NOW)
    assert srs0 is not None
    srs1 = second.forward(srs0, "b.test", NOW)
    assert srs1 is not None and srs1.local.startswith("SRS1=") and srs1.domain == "b.test"
    assert srs1.local.endswith(f"=a.test={srs0.local[4:]}")
    assert second.reverse(srs1, NOW + 300 * DAY) == srs0  # SRS1 carries no stamp of its own
    again = third.forward(srs1, "x.test", NOW)  # a third keeps the first forwarder
    assert again is not None and third.reverse(again, NOW) == srs0
    assert first.reverse(srs0, NOW) == Address("dave", "c.test")


def test_a_local_part_that_would_pass_64_octets_is_not_rewritten() -> None:
    assert Srs(KEY).forward(Address("d" * 60, "c.test"), "a.test", NOW) is None


def test_the_key_is_made_once_mode_0600(tmp_path: Path) -> None:
    key = load_key(tmp_path)
    assert len(key) >= 32 and load_key(tmp_path) == key
    assert (tmp_path / "srs.key").stat().st_mode & 0o777 == 0o600


class Users:
    def exists(self, address: Address) -> bool:
        return address == Address("alice", "a.test")


def _resolver(srs: Srs) -> RecipientResolver:
    return RecipientResolver(
        [LocalDomain("a.test", aliases={"fwd": ("x@b.test",)})],
        Users(),
        srs=(srs, FakeClock(NOW, NOW)),
    )


def test_a_valid_srs_address_of_ours_forwards_to_the_sender_and_a_forged_one_is_unknown() -> None:
    srs = Srs(KEY)
    resolver = _resolver(srs)
    bounce_to = srs.forward(Address("dave", "c.test"), "a.test", NOW)
    assert bounce_to is not None
    assert resolver.resolve(bounce_to) == Local((), (Address("dave", "c.test"),))
    assert isinstance(resolver.resolve(Address("SRS0=AAAA=RA=c.test=dave", "a.test")), Unknown)
    assert isinstance(_resolver(Srs(b"old key")).resolve(bounce_to), Unknown)
    # An SRS1 of ours that names our own SRS0 unwraps twice; one to ours ends in a mailbox.
    to_alice = srs.forward(Address("alice", "a.test"), "a.test", NOW)
    assert to_alice is not None
    twice = srs.forward(to_alice, "a.test", NOW)
    assert twice is not None and twice.local.startswith("SRS1=")
    assert resolver.resolve(twice) == Local((Address("alice", "a.test"),), ())
    assert not resolver.owns(Address("alice", "a.test"), to_alice)  # never a sender of hers


class Recorder:
    def __init__(self) -> None:
        self.senders: list[ReversePath] = []

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        self.senders.extend(message.mail_from for _ in recipients)
        return [Delivered() for _ in recipients]


def test_the_router_sends_forwards_of_foreign_senders_from_an_srs_address() -> None:
    srs, remote = Srs(KEY), Recorder()
    courier = RoutingCourier(
        lambda d: d == "a.test", Recorder(), remote, srs=(srs, FakeClock(NOW, NOW))
    )
    rows = [
        QueuedRecipient(1, Address("x", "b.test"), Address("fwd", "a.test")),  # forwarded
        QueuedRecipient(2, Address("y", "b.test"), Address("y", "b.test")),  # addressed so
    ]
    foreign = QueuedMessage("Q1", Address("dave", "c.test"), 0.0, "", 10, body=b"\r\nx\r\n")
    asyncio.run(courier.deliver(foreign, rows))
    assert remote.senders == [
        srs.forward(Address("dave", "c.test"), "a.test", NOW),
        foreign.mail_from,
    ]
    remote.senders.clear()
    ours = QueuedMessage("Q2", Address("alice", "a.test"), 0.0, "", 10, body=b"\r\nx\r\n")
    asyncio.run(courier.deliver(ours, rows))  # our own domain's SPF already covers us
    assert remote.senders == [ours.mail_from, ours.mail_from]


def test_an_srs_answer_is_not_kept_it_ages_with_the_clock() -> None:
    class Versioned:
        def exists(self, address: Address) -> bool:
            return address.local == "alice"

        def generation(self) -> object:
            return 1  # the accounts never change here: only the clock moves

    srs = Srs(KEY)
    clock = FakeClock(NOW, NOW)
    resolver = RecipientResolver([LocalDomain("a.test")], Versioned(), srs=(srs, clock))
    bounce_to = srs.forward(Address("dave", "c.test"), "a.test", NOW)
    assert bounce_to is not None
    assert resolver.resolve(bounce_to) == Local((), (Address("dave", "c.test"),))
    clock.advance(40 * DAY)  # past the SRS age limit
    assert isinstance(resolver.resolve(bounce_to), Unknown)
