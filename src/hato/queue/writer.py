"""Group commit: one thread owns the SQLite connection and commits many jobs at once.

Must not import anything of hato but model, durable and this room.

Theory of operation: jobs (a function of the connection) arrive on a thread-safe queue.
The writer thread (a `hato.durable.worker.BatchWorker`) blocks for the first one, then takes
every job already waiting (a batch),
fsyncs the messages directory once if any job in the batch added a body file, runs each
job inside its own SAVEPOINT of ONE transaction (a failing job rolls back alone), commits
(WAL + synchronous=FULL: the commit is one fsync of the WAL), and settles the whole batch on
the event loop with a single `call_soon_threadsafe`. While one batch commits, the next one
gathers, so the fsync cost is shared by every session that was waiting: the busier the
server, the bigger the batches.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hato.durable.worker import BatchWorker, call_on_loop
from hato.model import logfmt
from hato.queue.body import QueueWriteError

log = logging.getLogger("hato.queue")

T = TypeVar("T")

MAX_BATCH = 1024


@dataclass(slots=True, eq=False)
class Job(Generic[T]):
    """One unit of work for the writer thread.

    `run` executes inside the batch transaction. `after_commit` runs in the writer thread
    once the transaction is durable (e.g. unlink a finished body). `on_failure` runs in the
    writer thread when the job did not commit (e.g. unlink the body of a refused message).
    `on_loop` runs on the event loop after a successful commit, even if the awaiting caller
    was cancelled (e.g. hand a new message to the runner).
    """

    run: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    sync_dir: bool = False
    after_commit: Callable[[T], None] | None = None
    on_failure: Callable[[], None] | None = None
    on_loop: Callable[[T], None] | None = None
    result: T | None = field(default=None, init=False)
    error: BaseException | None = field(default=None, init=False)


class GroupCommitWriter:
    """The writer thread; `submit()` may be called from any thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        dir_fd: int,
        loop: asyncio.AbstractEventLoop,
        lock_path: str | None = None,
    ) -> None:
        self._conn = conn
        self._dir_fd = dir_fd
        self._lock_fd = (
            None
            if lock_path is None
            else os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        )
        self._loop = loop
        self._worker: BatchWorker[Job[Any]] = BatchWorker(
            self._run_batch, name="hato-queue-writer", max_batch=MAX_BATCH
        )
        self.batches = 0  # counters for the benchmark and tests
        self.jobs_done = 0

    def start(self) -> None:
        self._worker.start()

    def submit(self, job: Job[Any]) -> None:
        self._worker.submit(job)

    def stop(self) -> None:
        """Finish the jobs already submitted, then end the thread (blocks: run in a thread)."""
        self._worker.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run_batch(self, batch: list[Job[Any]]) -> None:
        try:
            self._commit_batch(batch)
        except Exception as exc:
            # Not a catch-all for the queue's own logic: a bug in one batch must fail that
            # batch's callers (451, retry later) rather than kill the thread and hang every
            # session that commits after it.
            log.exception(logfmt("writer-error", jobs=len(batch), error=type(exc).__name__))
            if self._conn.in_transaction:
                self._conn.rollback()
            failure = QueueWriteError(None, f"queue writer: {type(exc).__name__}: {exc}")
            for job in batch:
                if job.error is None:
                    job.error = failure
        for job in batch:
            try:
                if job.error is None and job.after_commit is not None:
                    job.after_commit(job.result)
                elif job.error is not None and job.on_failure is not None:
                    job.on_failure()
            except OSError as exc:
                log.warning(logfmt("after-commit-failed", error=exc.strerror))
        self.batches += 1
        self.jobs_done += len(batch)
        call_on_loop(self._loop, _settle, batch)

    def _commit_batch(self, batch: list[Job[Any]]) -> None:
        dir_error: OSError | None = None
        if any(job.sync_dir for job in batch):
            try:
                # The new body files' directory entries must be durable too (fsync(2) on a
                # file does not promise its name); one fsync covers every file of the batch.
                os.fsync(self._dir_fd)
            except OSError as exc:
                dir_error = exc
        todo = [job for job in batch if not (job.sync_dir and dir_error is not None)]
        for job in batch:
            if job.sync_dir and dir_error is not None:
                job.error = dir_error
        # SQLite rolls a whole transaction back on some errors (SQLITE_FULL, SQLITE_IOERR),
        # taking the savepoints of the jobs before the failing one with it. Then run the
        # batch again without the failed job, as long as each pass drops one (a full database
        # refuses each message that does not fit, and only those); the last possible pass
        # gives up on the rest (then the store itself is in trouble).
        for passes_left in range(len(todo), -1, -1):
            broken = self._run_jobs(todo, give_up=passes_left == 0)
            if not broken:
                break
            todo = [job for job in todo if job.error is None]
            if not todo:
                break

    def _run_jobs(self, todo: list[Job[Any]], *, give_up: bool) -> bool:
        """One transaction over `todo`; True if SQLite dropped it and it must be run again."""
        if self._lock_fd is None:
            return self._transaction(todo, give_up=give_up)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks until a sibling process commits
        try:
            return self._transaction(todo, give_up=give_up)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _transaction(self, todo: list[Job[Any]], *, give_up: bool) -> bool:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        for i, job in enumerate(todo):
            conn.execute("SAVEPOINT job")
            try:
                job.result = job.run(conn)
            except (sqlite3.Error, OSError, ValueError) as exc:
                job.error = exc
                if not conn.in_transaction:
                    if give_up:
                        for rest in todo[i + 1 :]:
                            rest.error = exc
                    for done in todo[:i]:
                        done.result = None
                        if give_up:
                            done.error = exc
                    return not give_up
                conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            for job in todo:
                if job.error is None:
                    job.error = exc
        return False


def _settle(batch: list[Job[Any]]) -> None:
    """On the event loop: resolve every future of a batch."""
    for job in batch:
        if job.error is None:
            if job.on_loop is not None:
                job.on_loop(job.result)
            if not job.future.done():
                job.future.set_result(job.result)
        elif not job.future.done():
            job.future.set_exception(job.error)
