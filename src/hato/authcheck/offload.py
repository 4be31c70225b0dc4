"""Where the CPU-heavy part of a check runs: never on the event loop.

dkimpy canonicalizes and hashes the whole body once per signature it verifies, with regular
expressions over the whole body: for a message of some megabytes with several signatures that
is seconds of work, and each regex pass holds the GIL throughout (1.9 s for 8.6 MB on the
build VM), so even a thread would stall the event loop. The checks therefore hand it to an
`Offload`: a callable that runs one picklable piece of synchronous work elsewhere and lets
the loop await its result. `ProcessPool` runs it in a small pool of worker processes (spawned,
not forked: the server has threads), so the number running at once is bounded (the rest wait
in its queue) however many messages arrive together, and the server's own GIL stays free.
A piece that is waited for no longer (the check's time budget ran out) still runs to its end
in the pool; the pool's size is what bounds that cost. `WorkerPool` (threads) and `in_thread`
serve tests and work that releases the GIL.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Protocol, TypeVar

_T = TypeVar("_T")

# Verifications that run at once per process; the machine's other cores serve the sessions.
POOL_SIZE = 2


class Offload(Protocol):
    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]: ...


def in_thread(work: Callable[[], _T], /) -> Awaitable[_T]:
    """The default `Offload`: asyncio's default executor (for tests and one-off calls)."""
    return asyncio.to_thread(work)


class WorkerPool:
    """An `Offload` over its own pool of `size` threads, created at the first use (so that a
    process that forks its workers after building its checkers starts no thread before)."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self._size = size
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._size, thread_name_prefix="hato-authcheck")
        return asyncio.get_running_loop().run_in_executor(self._pool, work)


class ProcessPool:
    """An `Offload` over its own pool of `size` spawned processes, started at the first use
    (after the supervisor forked its workers). The work and its result must pickle."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self._size = size
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._size, mp_context=context)
        return asyncio.get_running_loop().run_in_executor(self._pool, work)
