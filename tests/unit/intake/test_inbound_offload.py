"""Where a message's DKIM and ARC work runs: a small message in a thread of the server
(cheaper than the process pool, authcheck/offload.py NEARBY_LIMIT), a bigger one in the pool,
with the same verdict either way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dkim  # type: ignore[import-untyped]

from dnsserver import FakeResolver
from hato.authcheck.dkim import DkimAlgorithm, generate_key
from hato.authcheck.offload import NEARBY_LIMIT, BySize, in_thread
from hato.intake.inbound import InboundChecker
from hato.model import Address
from hato.model.dns import RdType
from kit.clock import FakeClock

_T = TypeVar("_T")
PEM, RECORD = generate_key(DkimAlgorithm.RSA_SHA256)


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]:
        self.calls += 1
        return in_thread(work)


def _message(body_size: int) -> bytes:
    body = (b"x" * 70 + b"\r\n") * (body_size // 72 + 1)
    message = b"From: <news@sender.test>\r\nSubject: hi\r\n\r\n" + body
    signature = dkim.sign(message, b"s1", b"sender.test", PEM, include_headers=[b"from"])
    return bytes(signature) + message


def _check(message: bytes) -> tuple[str, int, int]:
    resolver = FakeResolver(
        {
            ("sender.test", RdType.TXT): ["v=spf1 ip4:192.0.2.1 -all"],
            ("s1._domainkey.sender.test", RdType.TXT): [RECORD],
            ("_dmarc.sender.test", RdType.TXT): ["v=DMARC1; p=reject"],
        }
    )
    checker = InboundChecker(resolver, authserv_id="mx.test", clock=FakeClock(1_700_000_000.0, 0.0))
    nearby, far = Counting(), Counting()
    checker.routes = BySize(nearby, far)
    verdict = asyncio.run(
        checker.check(
            client_ip="192.0.2.1",
            helo="mail.sender.test",
            mail_from=Address.parse("news@sender.test"),
            message=message,
        )
    )
    return verdict.summary, nearby.calls, far.calls


def test_a_small_message_is_verified_in_a_thread() -> None:
    summary, nearby, far = _check(_message(10_000))
    assert "dkim=pass" in summary and "dmarc=pass" in summary
    assert (nearby, far) == (1, 0)


def test_a_bigger_message_goes_to_the_pool() -> None:
    summary, nearby, far = _check(_message(NEARBY_LIMIT + 1))
    assert "dkim=pass" in summary and "dmarc=pass" in summary
    assert (nearby, far) == (0, 1)
