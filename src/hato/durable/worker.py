"""The batching worker thread: many callers' jobs, one durable step for all of them.

Theory of operation: jobs arrive on a thread-safe queue from any thread. A worker blocks for
the first one, then takes every job already waiting, up to a limit (a batch), and hands the
batch to `run_batch`, which does the slow durable part once for all (one fsync or syncfs, one
transaction commit). While one batch runs, the next one gathers: the busier the server, the
bigger the batches, and the fsync cost is shared by everyone who was waiting. `run_batch` then
settles its callers' futures with one wake-up of each event loop (`call_on_loop`).

From an event loop, `submit_soon` gathers the jobs of one turn of the loop (the commits of every
session whose last octets came in the same read of the sockets) and hands them over together
at the end of that turn: one wake-up of the worker for all of them, and one batch, where a
wake-up a job let the worker start on the first one alone and then take the GIL back and
forth with the loop at each of its system calls while the others were still being submitted.

`stop()` lets the jobs already submitted finish, then ends every thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")


class _Stop:
    pass


_STOP = _Stop()


class _Group(Generic[T]):
    """The jobs of one turn of an event loop (`submit_soon`), handed over together."""

    __slots__ = ("jobs",)

    def __init__(self, jobs: list[T]) -> None:
        self.jobs = jobs


class BatchWorker(Generic[T]):
    """`threads` threads running `run_batch` over batches of jobs of total `weight` up to
    `max_batch` (a first job heavier than that makes a batch of its own)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], None],
        *,
        name: str,
        max_batch: int,
        threads: int = 1,
        weight: Callable[[T], int] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._name = name
        self._max_batch = max_batch
        self._count = max(1, threads)
        self._weight = weight
        self._jobs: queue.SimpleQueue[T | _Group[T] | _Stop] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Per event loop, its jobs of this turn (`submit_soon`); each list is touched by its
        # loop's thread only, or taken whole by `pop` (atomic) in `_hand_over` or `stop`.
        self._soon: dict[asyncio.AbstractEventLoop, list[T]] = {}

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def start(self) -> None:
        for i in range(self._count):
            name = self._name if self._count == 1 else f"{self._name}-{i}"
            thread = threading.Thread(target=self._main, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job: T) -> None:
        """Queue `job` (from any thread)."""
        self._jobs.put(job)

    def submit_soon(self, loop: asyncio.AbstractEventLoop, job: T) -> None:
        """From `loop`'s thread: queue `job` at the end of this turn of the loop, with every
        other job submitted so in the same turn (one wake-up of the worker for them all)."""
        jobs = self._soon.get(loop)
        if jobs is None:
            jobs = self._soon[loop] = []
            loop.call_soon(self._hand_over, loop)
        jobs.append(job)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._soon.pop(loop, None)
        if jobs:
            self._jobs.put(_Group(jobs))

    def stop(self) -> None:
        """Finish the jobs already submitted, then end the threads (blocks: the caller waits
        for running batches)."""
        for loop in list(self._soon):  # a turn that has not ended: its jobs go now
            self._hand_over(loop)
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            thread.join()

    def _main(self) -> None:
        carried: list[T] = []  # jobs of a handed-over list past the last batch's limit
        while True:
            if carried:
                first: T | _Group[T] | _Stop = _Group(carried)
                carried = []
            else:
                first = self._jobs.get()
            if isinstance(first, _Stop):
                return
            waiting = first.jobs if isinstance(first, _Group) else [first]
            batch: list[T] = []
            taken = 0
            stop = False
            while True:
                for n, job in enumerate(waiting):
                    if batch and taken >= self._max_batch:
                        carried = waiting[n:]
                        break
                    batch.append(job)
                    taken += self._weight(job) if self._weight is not None else 1
                if carried or taken >= self._max_batch:
                    break
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                waiting = nxt.jobs if isinstance(nxt, _Group) else [nxt]
            self._run_batch(batch)
            if stop and not carried:
                return
            if stop:
                self._jobs.put(_STOP)  # after the carried jobs' batches


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[A], None], arg: A) -> None:
    """From a worker thread: run `callback(arg)` on `loop` (one wake-up); nothing when the
    loop is closed already (nobody waits any more)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, arg)
