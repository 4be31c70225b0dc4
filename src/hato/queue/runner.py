"""The queue runner: hands queued messages to a Courier and records what happened.

Must not import anything of hato but model and smtp.

Theory of operation. Work comes from two places: messages just committed (handed over in
memory by `QueueStore.commit`, already leased to us: no polling delay and no extra write), and
rows that are due (deferred rows whose next attempt has come, rows of a previous process
given back at open, rows whose lease ran out, rows another node committed or an operator
released: `QueueStore.watch` wakes the scan), leased in one write. Both wait for a free
delivery slot before taking work, so a busy node leaves new mail to idle ones. Each message is one
courier call, at most `max_in_flight` at a time; the outcomes go through the same group-
commit writer as new messages. The due-row scan sleeps until the earliest next attempt (at
most `max_sleep`), or until `wake()`.

An in-flight attempt is bounded by `attempt_timeout`, shorter than the lease, so a lease
never runs out under a live attempt; the rows in flight are also never taken twice.

After an attempt, the delivery status notifications its outcomes call for (bounces, delay
warnings, success reports: see `bounce.py`) are queued as one new message, before the
outcomes are recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
from collections.abc import Sequence
from typing import assert_never

from hato.model import (
    Clock,
    Courier,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
    logfmt,
)
from hato.model.queuestore import Pending, RowUpdate, Status
from hato.queue.body import QueueWriteError
from hato.queue.bounce import Committer, Notifier, report_for
from hato.queue.dsn import Action, RecipientReport
from hato.queue.ids import Rng
from hato.queue.protocol import QueueStore
from hato.queue.schedule import Schedule, delay_warning_due, expired_reply, retry_at

log = logging.getLogger("hato.queue")

# What a recipient's row says when the courier raised or gave a wrong answer (detail: the log).
COURIER_ERROR = Reply(451, "4.3.0", "temporary delivery failure")


class QueueRunner:
    def __init__(
        self,
        queue: QueueStore,
        courier: Courier,
        *,
        clock: Clock,
        schedule: Schedule | None = None,
        rng: Rng | None = None,
        max_in_flight: int = 32,
        attempt_timeout: float = 600.0,
        max_sleep: float = 60.0,
        scan_limit: int = 500,
        hostname: str | None = None,
        committer: Committer | None = None,
    ) -> None:
        """`hostname`: this MTA's name in the DSNs it sends (Reporting-MTA, MAILER-DAEMON@);
        the composition root passes the configured one (default: the system's). `committer`:
        how a DSN is queued (queue/bounce.py; the composition root's encrypts keyed copies)."""
        if attempt_timeout >= queue.lease_seconds:
            raise ValueError("attempt_timeout must be shorter than the queue's lease")
        self._queue = queue
        self._courier = courier
        self._clock = clock
        self._schedule = schedule if schedule is not None else Schedule()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._attempt_timeout = attempt_timeout
        self._max_sleep = max_sleep
        self._scan_limit = scan_limit
        self._in_flight: set[int] = set()  # row ids being delivered now
        self._wake = asyncio.Event()
        self._sleep_until = float("inf")  # when the due scan will look next (wall clock)
        self._notifier = Notifier(
            queue,
            hostname=hostname or socket.gethostname(),
            clock=clock,
            schedule=self._schedule,
            committer=committer,
        )

    def wake(self) -> None:
        """Scan for due rows now (after a clock jump, or an operator's flush)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._fresh_loop(tg))
            tg.create_task(self._due_loop(tg))
            tg.create_task(self._queue.watch(self.wake, self._slots.locked))  # other nodes

    async def _free_slot(self) -> None:
        """Until a delivery slot is free. Work is taken only then: a shared store leaves the
        mail of a busy node to idle ones (queue/postgres.py)."""
        async with self._slots:
            pass

    async def _fresh_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            await self._free_slot()
            for pending in await self._queue.wait_fresh():
                await self._dispatch(tg, pending)

    async def _due_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            await self._free_slot()
            self._wake.clear()
            try:
                batch = await self._queue.take_due(limit=self._scan_limit, exclude=self._in_flight)
                if len(batch) >= self._scan_limit:
                    delay = 0.0
                else:
                    delay = await self._delay_until_due()
            except QueueWriteError as exc:
                log.error(logfmt("scan-failed", errno=exc.errno, error=exc.detail))
                batch, delay = [], self._max_sleep
            for pending in batch:
                await self._dispatch(tg, pending)
            if delay > 0:
                self._sleep_until = self._clock.now() + delay
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._sleep_until = float("inf")

    async def _delay_until_due(self) -> float:
        due = await self._queue.next_due()
        if due is None:
            return self._max_sleep
        # At least a little: a row that is due but in flight here must not make us spin.
        return min(max(due - self._clock.now(), 0.01), self._max_sleep)

    async def _dispatch(self, tg: asyncio.TaskGroup, pending: Pending) -> None:
        await self._slots.acquire()
        if self._clock.now() + self._attempt_timeout >= pending.lease_until:
            # Too little lease left for a whole attempt (it waited long for a slot): leave
            # the rows to the due scan, which takes them again once the lease has run out.
            self._slots.release()
            self._queue.release(pending.message.queue_id)
            log.info(logfmt("lease-too-short", id=pending.message.queue_id))
            return
        self._in_flight.update(r.row_id for r in pending.recipients)
        tg.create_task(self._attempt(pending))

    async def _attempt(self, pending: Pending) -> None:
        try:
            # A small body not handed over in memory (a backlog, or a due scan) is read now.
            message = await self._queue.load_body(pending.message)
            outcomes, unknown = await self._deliver(message, pending.recipients)
            results = [
                self._update(message, rcpt, outcome, unknown)
                for rcpt, outcome in zip(pending.recipients, outcomes, strict=True)
            ]
            updates = [update for update, _ in results]
            reports = [report for _, report in results if report is not None]
            if reports:
                updates = await self._notify(message, updates, reports)
            await self._queue.record(
                pending.message.queue_id, updates, has_file=bool(pending.message.body_path)
            )
            retries = [u.next_attempt for u in updates if u.status is Status.QUEUED]
            if retries and min(retries) < self._sleep_until:
                self._wake.set()  # a retry due sooner than the scan would look (retry_after)
        except QueueWriteError as exc:
            # The rows stay leased; the due scan takes them again once the lease runs out.
            log.error(
                logfmt(
                    "record-failed", id=pending.message.queue_id, errno=exc.errno, error=exc.detail
                )
            )
        finally:
            self._in_flight.difference_update(r.row_id for r in pending.recipients)
            self._slots.release()
            self._queue.release(pending.message.queue_id)

    async def _deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> tuple[Sequence[Outcome], bool]:
        """The courier's outcomes, and whether they are guesses (the attempt's end unknown)."""
        try:
            async with asyncio.timeout(self._attempt_timeout):
                outcomes = await self._courier.deliver(message, recipients)
        except Exception as exc:
            # STYLE.md: the one catch-all around a queue attempt. Whatever went wrong, it is a
            # temporary failure of this attempt; we cannot know whether the message went out,
            # so the next attempt is marked recovered (the courier checks: exactly once).
            log.warning(
                logfmt("courier-error", id=message.queue_id, error=f"{type(exc).__name__}: {exc}")
            )
            return [TempFailed(COURIER_ERROR)] * len(recipients), True
        if len(outcomes) != len(recipients):
            log.error(
                logfmt(
                    "courier-error",
                    id=message.queue_id,
                    error="outcome count mismatch",
                    expected=len(recipients),
                    got=len(outcomes),
                )
            )
            return [TempFailed(COURIER_ERROR)] * len(recipients), True
        return outcomes, False

    async def _notify(
        self, message: QueuedMessage, updates: list[RowUpdate], reports: list[RecipientReport]
    ) -> list[RowUpdate]:
        """Queue the attempt's one DSN; the updates to record (changed if it failed)."""
        if any(r.action is Action.DELAYED for r in reports):
            try:
                # One delay warning per message, however many attempts and nodes defer it.
                claimed = await self._queue.claim_delay_warning(message.queue_id)
            except QueueWriteError as exc:
                log.error(logfmt("dsn-failed", id=message.queue_id, error=exc.detail))
                claimed = False
            if not claimed:
                reports = [r for r in reports if r.action is not Action.DELAYED]
            if not reports:
                return updates
        try:
            await self._notifier.send(message, reports)
        except (QueueWriteError, OSError) as exc:
            # RFC 5321 §6.1: a failure after acceptance MUST be reported. The DSN could not
            # be queued (a full disk, an unreadable body): the failed recipients stay
            # queued, so the next attempt decides (and bounces) them again.
            detail = exc.detail if isinstance(exc, QueueWriteError) else str(exc)
            log.error(logfmt("dsn-failed", id=message.queue_id, error=detail))
            retry = self._clock.now() + self._schedule.first_retry
            failed = {r.recipient.row_id for r in reports if r.action is Action.FAILED}
            return [
                dataclasses.replace(u, status=Status.QUEUED, next_attempt=retry)
                if u.row_id in failed
                else u
                for u in updates
            ]
        return updates

    def _update(
        self, message: QueuedMessage, rcpt: QueuedRecipient, outcome: Outcome, unknown: bool
    ) -> tuple[RowUpdate, RecipientReport | None]:
        """The row's new state, and what its sender is to be told of it (if anything)."""
        now = self._clock.now()
        attempts = rcpt.attempts + 1
        fields = {"id": message.queue_id, "to": f"<{rcpt.address}>", "attempts": attempts}
        match outcome:
            case Delivered(detail=detail):
                log.info(logfmt("delivered", **fields, detail=detail or None))
                report = report_for(message, rcpt, outcome, now=now)
                row = RowUpdate(rcpt.row_id, Status.DELIVERED, attempts, now, detail or None)
                return row, report
            case TempFailed(reply=reply, retry_after=hint):
                at = retry_at(
                    self._schedule,
                    attempts=attempts,
                    received_at=message.received_at,
                    now=now,
                    rng=self._rng,
                )
                if at is not None and hint is not None:
                    # The courier expects the cause to pass soon (a disk that fills and is
                    # freed): never later than the normal backoff, sooner if it says so.
                    at = min(at, now + max(hint, 0.0))
                if at is None:
                    final = expired_reply(reply)
                    log.info(logfmt("expired", **fields, reply=str(reply)))
                    report = report_for(message, rcpt, outcome, now=now, gave_up=True)
                    row = RowUpdate(rcpt.row_id, Status.FAILED, attempts, now, str(final))
                    return row, report
                log.info(logfmt("deferred", **fields, next=round(at - now), reply=str(reply)))
                warn = delay_warning_due(self._schedule, received_at=message.received_at, now=now)
                report = report_for(message, rcpt, outcome, now=now, warn_delay=warn)
                row = RowUpdate(rcpt.row_id, Status.QUEUED, attempts, at, str(reply), unknown)
                return row, report
            case PermFailed(reply=reply):
                log.info(logfmt("failed", **fields, reply=str(reply)))
                report = report_for(message, rcpt, outcome, now=now)
                return RowUpdate(rcpt.row_id, Status.FAILED, attempts, now, str(reply)), report
            case _:
                assert_never(outcome)
