"""Where a message's DKIM and ARC work runs: a small message at once, on the loop (cheaper
than the process pool or a thread hand-off, authcheck/offload.py NEARBY_LIMIT), a bigger one
(or one whose signatures together hash more) in the pool, with the same verdict either way;
and what the caches decided starts no task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dkim  # type: ignore[import-untyped]

from dnsserver import FakeResolver
from hato.authcheck.dkim import DkimAlgorithm, generate_key
from hato.authcheck.offload import NEARBY_LIMIT, BySize, in_thread, inline
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


def _message(body_size: int, signatures: int = 1) -> bytes:
    body = (b"x" * 70 + b"\r\n") * (body_size // 72 + 1)
    message = b"From: <news@sender.test>\r\nSubject: hi\r\n\r\n" + body
    signed = b""
    for _ in range(signatures):
        signed += dkim.sign(message, b"s1", b"sender.test", PEM, include_headers=[b"from"])
    return signed + message


def _resolver() -> FakeResolver:
    return FakeResolver(
        {
            ("sender.test", RdType.TXT): ["v=spf1 ip4:192.0.2.1 -all"],
            ("s1._domainkey.sender.test", RdType.TXT): [RECORD],
            ("_dmarc.sender.test", RdType.TXT): ["v=DMARC1; p=reject"],
        }
    )


def _check(message: bytes) -> tuple[str, int, int]:
    resolver = _resolver()
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


def test_a_small_message_is_verified_at_once() -> None:
    summary, nearby, far = _check(_message(10_000))
    assert "dkim=pass" in summary and "dmarc=pass" in summary
    assert (nearby, far) == (1, 0)
    checker = InboundChecker(_resolver(), authserv_id="mx.test", clock=FakeClock(0.0, 0.0))
    assert checker.routes.nearby is inline


def test_a_bigger_message_goes_to_the_pool() -> None:
    summary, nearby, far = _check(_message(NEARBY_LIMIT + 1))
    assert "dkim=pass" in summary and "dmarc=pass" in summary
    assert (nearby, far) == (0, 1)


def test_several_signatures_over_a_body_count_once_each() -> None:
    # Each signature hashes the body again: 3 x 30 KB is more than NEARBY_LIMIT of work.
    summary, nearby, far = _check(_message(30_000, signatures=3))
    assert summary.count("dkim=pass") == 3
    assert (nearby, far) == (0, 1)


def test_inline_work_never_suspends() -> None:
    async def run() -> int:
        awaitable = inline(lambda: 7)
        return await awaitable

    assert asyncio.run(run()) == 7


def test_what_the_caches_decided_starts_no_task() -> None:
    # The second message from the same client, sender and HELO: SPF is kept (spf_cache.py),
    # the key and the DMARC record are answered at once, and there is no ARC set: the whole
    # check runs in the session's own task, without a wait for the loop to schedule others.
    checker = InboundChecker(_resolver(), authserv_id="mx.test", clock=FakeClock(1.0e9, 0.0))
    message = _message(2_000)
    created: list[object] = []

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
            created.append(coro)
            return asyncio.Task(coro, loop=loop)

        summaries = []
        for _ in range(2):
            created.clear()
            loop.set_task_factory(factory)
            verdict = await checker.check(
                client_ip="192.0.2.1",
                helo="mail.sender.test",
                mail_from=Address.parse("news@sender.test"),
                message=message,
            )
            loop.set_task_factory(None)
            summaries.append(verdict.summary)
        return summaries

    first, second = asyncio.run(run())
    assert first == second and "dmarc=pass" in second
    assert created == []
