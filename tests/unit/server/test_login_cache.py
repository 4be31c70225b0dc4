"""AUTH with the verified-credential cache ([auth] cache_ttl) in front of the account store: a
remembered success still meets the client's block, and every failure is still counted by the
throttle. Time is a fake clock; nothing here is timed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from argon2 import Parameters
from argon2.low_level import Type

from hato.accounts import UserStore
from hato.accounts.authcache import VerifiedCache
from hato.model import Address, Reply
from hato.model.role import Role
from hato.policy import AUTH_BLOCKED, AuthThrottle
from hato.policy.authlimit import AuthThrottleSettings
from hato.server.auth import ScramDecoy, VerifySlots
from hato.server.login import Login
from hato.server.metrics import Metrics
from kit.clock import FakeClock

if TYPE_CHECKING:
    from hato.server.context import SessionContext
    from hato.smtp import ServerConnection

FAST = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=8, parallelism=1
)
ALICE = Address("alice", "example.org")
CLIENT = "192.0.2.7"


class _Conn:
    """The replies a session would send."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def accept(self, text: str | None = None) -> None:
        self.said.append("235")

    def reply(self, reply: Reply) -> None:
        self.said.append(str(reply.code))

    def auth_challenge(self, data: bytes) -> None:
        self.said.append("334")


def _plain(password: str) -> bytes:
    return f"\0alice@example.org\0{password}".encode()  # RFC 4616 §2, base64 undone


def _store(tmp_path: Path, clock: FakeClock) -> tuple[UserStore, list[str]]:
    """The account store with alice, and the passwords it runs argon2id on."""
    store = UserStore(
        tmp_path / "users.db",
        parameters=FAST,
        scram_iterations=0,
        verified_cache=VerifiedCache(300, 10, now=clock.monotonic),
    )
    store.add(ALICE, "correct horse")
    verified: list[str] = []
    original = store._check

    def check(stored: str, password: str) -> bool:
        verified.append(password)
        return original(stored, password)

    store._check = check  # type: ignore[method-assign]
    return store, verified


def test_sessions_logging_in_together_cost_one_verification(tmp_path: Path) -> None:
    # Ten sessions of one relay log in at once (the cache is empty): one argon2id run, the
    # other nine find the verified password in the cache. Wrong passwords still run each.
    clock = FakeClock()
    store, verified = _store(tmp_path, clock)
    slots = VerifySlots(2)
    first = threading.Event()  # the first verification holds until the others queued up
    original = store._check

    def check(stored: str, password: str) -> bool:
        if not verified:
            first.wait(20)
        return original(stored, password)

    store._check = check  # type: ignore[method-assign]
    ctx = SimpleNamespace(
        accounts=store,
        verify_slots=slots,
        scram=ScramDecoy(b"k" * 32),
        throttle=AuthThrottle(clock, AuthThrottleSettings(failure_delay=0, max_failure_delay=0)),
        metrics=Metrics().role(Role.SUBMISSION),
    )

    async def login(password: str, n: int) -> list[str]:
        conn = _Conn()
        session = Login(cast("SessionContext", ctx), f"192.0.2.{n}", f"s{n}")
        await session.start(cast("ServerConnection", conn), "PLAIN", _plain(password))
        return conn.said

    async def together(passwords: list[str]) -> list[list[str]]:
        tasks = [asyncio.create_task(login(p, n)) for n, p in enumerate(passwords, 1)]
        # Go on when all ten wait for alice's turn, or (without the per-account turn) a
        # second verification started beside the first: a condition that a thread and the
        # slots' bookkeeping make true, polled (no event covers both; no time is assumed).
        while slots.using(str(ALICE)) < len(passwords) and len(verified) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        first.set()
        return list(await asyncio.gather(*tasks))

    async def main() -> None:
        assert await together(["correct horse"] * 10) == [["235"]] * 10
        assert verified == ["correct horse"]
        assert await together(["wrong"] * 3) == [["535"]] * 3
        assert verified == ["correct horse"] + ["wrong"] * 3

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        store.close()


def test_a_remembered_success_still_meets_the_block(tmp_path: Path) -> None:
    clock = FakeClock()
    store, verified = _store(tmp_path, clock)
    throttle = AuthThrottle(
        clock, AuthThrottleSettings(failure_delay=0, max_failure_delay=0, max_failures=2)
    )
    ctx = SimpleNamespace(
        accounts=store,
        verify_slots=VerifySlots(1),
        scram=ScramDecoy(b"k" * 32),
        throttle=throttle,
        metrics=Metrics().role(Role.SUBMISSION),
    )

    async def login(password: str) -> list[str]:
        conn = _Conn()
        session = Login(cast("SessionContext", ctx), CLIENT, "s1")
        await session.start(cast("ServerConnection", conn), "PLAIN", _plain(password))
        return conn.said

    async def main() -> None:
        assert await login("correct horse") == ["235"]
        assert await login("correct horse") == ["235"]
        assert verified == ["correct horse"]  # the second login: no argon2id
        assert await login("wrong") == ["535"]
        assert await login("wrong again") == [str(AUTH_BLOCKED.code)]  # counted, blocked
        assert verified == ["correct horse", "wrong", "wrong again"]  # each failure in full
        # The remembered password is refused while the client is blocked, unlooked at.
        assert await login("correct horse") == [str(AUTH_BLOCKED.code)]
        assert len(verified) == 3

    try:
        asyncio.run(main())
    finally:
        store.close()
