"""The batching worker thread: many callers' jobs, one durable step for all of them.

Theory of operation: jobs arrive on a thread-safe queue from any thread. A worker blocks for
the first one, then takes every job already waiting, up to a limit (a batch), and hands the
batch to `run_batch`, which does the slow durable part once for all (one fsync or syncfs, one
transaction commit). While one batch runs, the next one gathers: the busier the server, the
bigger the batches, and the fsync cost is shared by everyone who was waiting. `run_batch` then
settles its callers' futures with one wake-up of each event loop (`call_on_loop`).

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
        self._jobs: queue.SimpleQueue[T | _Stop] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

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

    def stop(self) -> None:
        """Finish the jobs already submitted, then end the threads (blocks: the caller waits
        for running batches)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            thread.join()

    def _main(self) -> None:
        while True:
            first = self._jobs.get()
            if isinstance(first, _Stop):
                return
            batch = [first]
            weight = self._weight
            taken = weight(first) if weight is not None else 1
            stop = False
            while taken < self._max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                batch.append(nxt)
                taken += weight(nxt) if weight is not None else 1
            self._run_batch(batch)
            if stop:
                return


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[A], None], arg: A) -> None:
    """From a worker thread: run `callback(arg)` on `loop` (one wake-up); nothing when the
    loop is closed already (nobody waits any more)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, arg)
