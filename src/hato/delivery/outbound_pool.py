"""Connection reuse and concurrency limits for outbound SMTP.

Theory of operation: `ConnectionPool` keeps sessions that finished a transaction cleanly, idle,
per `PoolKey` (address, port, TLS level, peer name, LMTP, AUTH user), for `idle_timeout`
seconds. `take(key)` hands out the most recently parked one after a successful RSET (RFC 5321
§4.1.1.5: RSET clears the transaction state; a session whose peer offers PIPELINING sends it
with the next MAIL instead, see smtp_client.ClientSession.reset), or None; `park(key, session)`
keeps a session unless it is unusable or has carried `max_messages` transactions, and then
QUITs it. `sweep()` closes the sessions idle for too long; `run_sweeper()` does so
periodically, for the app's TaskGroup; `aclose()` QUITs them all at shutdown.

`Limiter.slot(domain)` bounds the connections in use, per destination and in total (Postfix's
default_destination_concurrency_limit and default_process_limit); waiters are served as
capacity frees up.

Must not import anything of hato but model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from hato.model import Clock


class Reusable(Protocol):
    @property
    def usable(self) -> bool: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Reusable)


@dataclass(frozen=True, slots=True)
class PoolKey:
    address: str
    port: int
    tls: str
    server_name: str = ""
    lmtp: bool = False
    auth_user: str | None = None


class _Idle(Generic[S]):
    __slots__ = ("messages", "session", "since")

    def __init__(self, session: S, messages: int, since: float) -> None:
        self.session = session
        self.messages = messages
        self.since = since


class ConnectionPool(Generic[S]):
    def __init__(
        self,
        clock: Clock,
        idle_timeout: float = 5.0,
        max_messages: int = 100,
        errors: tuple[type[Exception], ...] = (OSError, TimeoutError),
    ) -> None:
        """`errors`: what a failed RSET or QUIT may raise (the driver's DeliveryError too)."""
        self._clock = clock
        self._errors = errors
        self._idle_timeout = idle_timeout
        self._max_messages = max_messages
        self._idle: dict[PoolKey, list[_Idle[S]]] = {}
        self._counts: dict[int, int] = {}  # id(session) -> transactions carried, while lent out

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def take(self, key: PoolKey) -> S | None:
        """An idle session for `key`, reset and ready for the next transaction, or None."""
        await self.sweep()
        stack = self._idle.get(key, [])
        while stack:
            idle = stack.pop()
            if not stack:
                self._idle.pop(key, None)
            if not idle.session.usable:
                await self._quietly_close(idle.session)
                continue
            try:
                await idle.session.reset()
            except self._errors:
                await self._quietly_close(idle.session)
                continue
            if not idle.session.usable:
                await self._quietly_close(idle.session)
                continue
            self._counts[id(idle.session)] = idle.messages
            return idle.session
        return None

    def lent(self, session: S) -> None:
        """Count a freshly opened session as lent out (0 transactions so far)."""
        self._counts.setdefault(id(session), 0)

    async def park(self, key: PoolKey, session: S) -> None:
        """Keep `session` for reuse after one more transaction, or close it."""
        messages = self._counts.pop(id(session), 0) + 1
        if self._idle_timeout <= 0 or messages >= self._max_messages or not session.usable:
            await self._quietly_close(session)
            return
        self._idle.setdefault(key, []).append(_Idle(session, messages, self._clock.monotonic()))

    async def discard(self, session: S) -> None:
        self._counts.pop(id(session), None)
        await self._quietly_close(session)

    async def sweep(self) -> None:
        """Close the sessions idle for longer than `idle_timeout`."""
        deadline = self._clock.monotonic() - self._idle_timeout
        stale: list[S] = []
        for key in list(self._idle):
            fresh = [i for i in self._idle[key] if i.since > deadline]
            stale.extend(i.session for i in self._idle[key] if i.since <= deadline)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        for session in stale:
            await self._quietly_close(session)

    async def run_sweeper(self) -> None:
        """Sweep forever (cancel to stop); run it in the app's TaskGroup."""
        while True:
            await asyncio.sleep(max(self._idle_timeout / 2, 0.5))
            await self.sweep()

    async def _quietly_close(self, session: S) -> None:
        # QUIT is a courtesy (RFC 5321 §4.1.1.10); a peer that is gone changes nothing here.
        with contextlib.suppress(*self._errors):
            await session.close()

    async def aclose(self) -> None:
        sessions = [i.session for stack in self._idle.values() for i in stack]
        self._idle.clear()
        for session in sessions:
            await self._quietly_close(session)


class Limiter:
    """At most `per_destination` connections per destination and `total` overall."""

    def __init__(self, per_destination: int = 10, total: int = 100) -> None:
        self._per = per_destination
        self._total = total
        self._in_use: dict[str, int] = {}
        self._sum = 0
        self._cond = asyncio.Condition()

    def in_use(self, destination: str) -> int:
        return self._in_use.get(destination, 0)

    @contextlib.asynccontextmanager
    async def slot(self, destination: str) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(
                lambda: self._sum < self._total and self.in_use(destination) < self._per
            )
            self._in_use[destination] = self.in_use(destination) + 1
            self._sum += 1
        try:
            yield
        finally:
            async with self._cond:
                self._sum -= 1
                left = self._in_use[destination] - 1
                if left:
                    self._in_use[destination] = left
                else:
                    del self._in_use[destination]
                self._cond.notify_all()
