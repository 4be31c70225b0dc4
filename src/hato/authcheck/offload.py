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
serve tests and work that releases the GIL. `inline` runs small, bounded work where it is
called (see NEARBY_LIMIT for why that is the cheapest and the quickest place for it).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Protocol, TypeVar

_T = TypeVar("_T")

# Verifications that run at once per process; the machine's other cores serve the sessions.
POOL_SIZE = 2

# Work on at most this many octets (a message's size times the signatures hashed over it) is
# done where it is asked for (`inline`, on the event loop), not in the process pool nor in a
# thread. Handing a message to another process (pickling it, two pipe writes and wake-ups
# each way, the executor's manager thread) cost about 1 ms of CPU per message, three times
# the verification of a 10 KiB message with the keys cached (fastverify.py). A thread of
# our own process frees nothing either: the verification is Python holding the GIL (the
# hashing and the RSA check in C take a few percent of it), so the loop waits for it all
# the same; and the hand-off itself made each message wait for the GIL twice, up to
# Python's switch interval (5 ms) each time while the loop is busy: under the mx benchmark's
# load (10 sessions, 2026-12-07) the DKIM step took 7 ms of which 1.3 ms was the work.
# At this bound the work is well under a millisecond, less than the loop spends on the
# message's own SMTP commands.
NEARBY_LIMIT = 64 * 1024


class Offload(Protocol):
    def __call__(self, work: Callable[[], _T], /) -> Awaitable[_T]: ...


def in_thread(work: Callable[[], _T], /) -> Awaitable[_T]:
    """The default `Offload`: asyncio's default executor (for tests and one-off calls)."""
    return asyncio.to_thread(work)


async def inline(work: Callable[[], _T], /) -> _T:
    """An `Offload` that does the work at once, on the caller's thread: only for work that
    NEARBY_LIMIT bounds (awaiting it never suspends)."""
    return work()


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


class BySize:
    """An `Offload` for checks of one message: `nearby` (`inline`) when the work is on at
    most NEARBY_LIMIT octets, else `far` (a `ProcessPool`); see NEARBY_LIMIT."""

    def __init__(self, nearby: Offload, far: Offload, limit: int = NEARBY_LIMIT) -> None:
        self.nearby = nearby
        self.far = far
        self.limit = limit

    def for_size(self, size: int, passes: int = 1) -> Offload:
        """`size`: the message's octets; `passes`: how many times the work reads them (one
        per DKIM signature: each hashes the body under its own c= and l=)."""
        return self.nearby if size * max(passes, 1) <= self.limit else self.far


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


# A lane hands its work over in batches of this size, and holds at most LANE_BACKLOG octets
# that its thread has not taken yet (see `Lane`): about what a message checked whole holds
# (its first 10 MiB arrive as one batch when it turns out larger, intake/capture.py).
LANE_BATCH = 1024 * 1024
LANE_BACKLOG = 16 * 1024 * 1024


class Lane:
    """Feeds a stream of chunks to `sink`, in order, in a thread `Offload` (`WorkerPool`: the
    sink shares the process, so it must let go of the GIL often, as `SignatureBodies` does).

    `feed()` is called on the event loop and only gathers chunks into batches; each full batch
    is queued, and one piece of work in the offload (never two at once: a lock) takes the
    queued batches in order. Memory stays bounded: when more than LANE_BACKLOG octets wait
    (every thread of the pool is busy with other messages), `feed()` does the waiting work
    itself, so the loop is slowed rather than the memory grown. `finish()` (awaited) hands
    over the last batch and returns once the sink has had everything. `abandon()` drops
    what waits and stops the work after its current batch.
    """

    def __init__(self, sink: Callable[[bytes], None], offload: Offload) -> None:
        self._sink = sink
        self._offload = offload
        self._batch: list[bytes | memoryview] = []
        self._size = 0
        self._queue: deque[bytes] = deque()
        self._waiting = 0  # octets queued, not yet taken
        self._state = threading.Lock()  # guards _queue, _waiting, _running
        self._order = threading.Lock()  # held while the sink runs: one batch at a time
        self._running = False
        self._abandoned = False
        self._error: Exception | None = None  # the sink's, raised by finish()

    def feed(self, chunk: bytes | memoryview) -> None:
        if self._abandoned:
            return
        self._batch.append(chunk)
        self._size += len(chunk)
        if self._size >= LANE_BATCH:
            self._push()

    def _push(self) -> None:
        if not self._batch:
            return
        batch = b"".join(self._batch)
        self._batch, self._size = [], 0
        with self._state:
            self._queue.append(batch)
            self._waiting += len(batch)
            start, self._running = not self._running, True
            behind = self._waiting > LANE_BACKLOG
        if behind:
            self._drain()
        elif start:
            asyncio.ensure_future(self._offload(self._work)).add_done_callback(_retrieve)

    def _work(self) -> None:
        while True:
            self._drain()
            with self._state:
                if not self._queue or self._abandoned:
                    self._running = False
                    return

    def _drain(self) -> None:
        with self._order:
            while True:
                with self._state:
                    if not self._queue or self._abandoned:
                        return
                    batch = self._queue.popleft()
                    self._waiting -= len(batch)
                try:
                    self._sink(batch)
                except Exception as error:  # handed to whoever awaits finish()
                    self._error = error
                    self.abandon()

    async def finish(self) -> None:
        self._push()
        await self._offload(self._drain)
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        with self._state:
            self._batch, self._size = [], 0
            self._abandoned = True
            self._queue.clear()
            self._waiting = 0


def _retrieve(future: asyncio.Future[None]) -> None:
    # A lane's background work is awaited by no one; its outcome is read so that a failure
    # surfaces in `finish()` (which runs the rest itself) rather than as a stray warning.
    if not future.cancelled():
        future.exception()
