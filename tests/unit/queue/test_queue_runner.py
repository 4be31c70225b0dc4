from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from queue_fakes import (
    FixedRng,
    ScriptedCourier,
    commit_message,
    eventually,
    open_queue,
    parse_dsn,
    run,
)

from hato.model import Outcome, PermFailed, QueuedMessage, QueuedRecipient, Reply, TempFailed
from hato.queue import Queue, QueueRunner, Schedule
from kit.clock import FakeClock

BUSY = TempFailed(Reply(451, "4.4.1", "try later"))
NO_SUCH_USER = PermFailed(Reply(550, "5.1.1", "no such user"))
DAY = 86400.0


def recipient_rows(root: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(root / "queue.db") as conn:
        return conn.execute(
            "SELECT address, status, attempts, next_attempt, last_reply, lease_owner"
            " FROM recipients ORDER BY row_id"
        ).fetchall()


@asynccontextmanager
async def running(
    queue: Queue, courier: ScriptedCourier, clock: FakeClock, **kwargs: object
) -> AsyncIterator[QueueRunner]:
    runner = QueueRunner(queue, courier, clock=clock, rng=FixedRng(), **kwargs)  # type: ignore[arg-type]
    task = asyncio.ensure_future(runner.run())
    try:
        yield runner
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_delivered_message_is_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = ScriptedCourier()

    async def main() -> str:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                queue_id = await commit_message(queue, to=("a@example.org", "b@example.org"))
                await eventually(lambda: "event=removed" in caplog.text)
            return queue_id
        finally:
            await queue.close()

    queue_id = run(main)
    (call,) = courier.calls
    assert call.message.queue_id == queue_id
    assert call.message.prefix == b"Received: by test\r\n"
    assert [str(r.address) for r in call.recipients] == ["a@example.org", "b@example.org"]
    assert not any(r.recovered for r in call.recipients)
    assert os.listdir(tmp_path / "messages") == []
    assert recipient_rows(tmp_path) == []
    assert f"event=queued id={queue_id} size=22 nrcpt=2 from=<alice@example.com>" in caplog.text
    assert f"event=delivered id={queue_id} to=<a@example.org> attempts=1" in caplog.text


def test_a_deferred_recipient_is_retried_when_due(tmp_path: Path) -> None:
    clock = FakeClock()
    courier = ScriptedCourier({"slow@example.org": BUSY})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock) as runner:
                await commit_message(queue, to=("fast@example.org", "slow@example.org"))
                await eventually(lambda: recipient_rows(tmp_path)[1][2] == 1)
                assert recipient_rows(tmp_path) == [
                    ("fast@example.org", "delivered", 1, clock.now(), "250 ok", None),
                    ("slow@example.org", "queued", 1, clock.now() + 300, str(BUSY.reply), None),
                ]
                clock.advance(299)
                runner.wake()
                await asyncio.sleep(0.05)
                assert len(courier.calls) == 1  # not due yet
                clock.advance(1)
                courier.script.clear()
                runner.wake()
                await eventually(lambda: recipient_rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    assert len(courier.calls) == 2
    (retry,) = courier.calls[1].recipients
    assert str(retry.address) == "slow@example.org" and retry.attempts == 1
    assert not retry.recovered
    assert os.listdir(tmp_path / "messages") == []


def test_permanent_failures_are_final_and_ask_for_a_bounce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = ScriptedCourier({"gone@example.org": NO_SUCH_USER})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await commit_message(queue, to=("gone@example.org",))
                await commit_message(queue, to=("gone@example.org",), mail_from=None)
                # Both messages, and the one bounce (to alice, delivered by the same courier).
                await eventually(lambda: caplog.text.count("event=removed") == 3)
        finally:
            await queue.close()

    run(main)
    assert caplog.text.count("event=dsn-queued") == 1
    assert "to=<alice@example.com> action=failed nrcpt=1" in caplog.text
    assert "event=bounce-suppressed" in caplog.text  # RFC 5321 §6.1: no bounce to <>
    (bounce,) = [c for c in courier.calls if str(c.recipients[0].address) == "alice@example.com"]
    assert bounce.message.mail_from is None
    assert recipient_rows(tmp_path) == []


def test_a_raising_courier_is_a_temporary_failure_and_the_retry_is_recovered(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    courier = ScriptedCourier({"x@example.org": ConnectionResetError("peer went away")})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock) as runner:
                await commit_message(queue, to=("x@example.org",))
                await eventually(lambda: recipient_rows(tmp_path)[0][2] == 1)
                (row,) = recipient_rows(tmp_path)
                assert row[1:5] == (
                    "queued",
                    1,
                    clock.now() + 300,
                    "451 4.3.0 temporary delivery failure",
                )
                courier.script.clear()
                clock.advance(300)
                runner.wake()
                await eventually(lambda: recipient_rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    assert courier.calls[1].recipients[0].recovered


class MiscountingCourier:
    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> Sequence[Outcome]:
        return []


def test_a_wrong_number_of_outcomes_counts_as_temporary(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        runner = QueueRunner(queue, MiscountingCourier(), clock=clock, rng=FixedRng())
        task = asyncio.ensure_future(runner.run())
        try:
            await commit_message(queue)
            await eventually(lambda: recipient_rows(tmp_path)[0][2] == 1)
            assert recipient_rows(tmp_path)[0][1] == "queued"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await queue.close()

    run(main)


def test_a_message_is_given_up_after_its_lifetime(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = ScriptedCourier({"slow@example.org": BUSY})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            schedule = Schedule(max_lifetime=DAY)
            async with running(queue, courier, clock, schedule=schedule) as runner:
                await commit_message(queue, to=("slow@example.org",))
                await eventually(lambda: len(courier.calls) == 1)
                await eventually(lambda: recipient_rows(tmp_path)[0][2] == 1)
                clock.advance(DAY)
                runner.wake()
                await eventually(lambda: caplog.text.count("event=removed") == 2)
        finally:
            await queue.close()

    run(main)
    assert len(courier.calls) == 3  # two tries, then the bounce
    assert "event=expired" in caplog.text
    assert "event=dsn-queued" in caplog.text and "action=failed" in caplog.text
    assert courier.calls[2].message.body is not None
    (status,) = parse_dsn(courier.calls[2].message.body).recipients
    # RFC 3463 §3.5: given up for age is X.4.7; the last remote reply is the diagnostic.
    assert (status["Action"], status["Status"]) == ("failed", "4.4.7")
    assert "451 4.4.1 try later" in status["Diagnostic-Code"]
    assert "body-unlink-failed" not in caplog.text  # an inline body has no file to remove


def test_unfinished_rows_of_a_dead_process_are_delivered_on_start_as_recovered(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    courier = ScriptedCourier()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        await commit_message(queue, to=("a@example.org",))  # no runner: the process "dies"
        await queue.close()
        clock.advance(5)
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await eventually(lambda: recipient_rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    (call,) = courier.calls
    assert call.recipients[0].recovered


def test_courier_calls_in_flight_are_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    courier = ScriptedCourier(gate=asyncio.Event())

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock, max_in_flight=3):
                await asyncio.gather(
                    *(commit_message(queue, to=(f"u{i}@example.org",)) for i in range(10))
                )
                await eventually(lambda: len(courier.calls) == 3)
                await asyncio.sleep(0.05)
                assert len(courier.calls) == 3
                assert courier.gate is not None
                courier.gate.set()
                await eventually(lambda: recipient_rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    assert courier.max_active == 3
    assert len(courier.calls) == 10


def test_the_runner_refuses_an_attempt_timeout_longer_than_the_lease(tmp_path: Path) -> None:
    async def main() -> None:
        queue = await open_queue(tmp_path, FakeClock(), lease_seconds=60.0)
        try:
            with pytest.raises(ValueError):
                QueueRunner(queue, ScriptedCourier(), clock=FakeClock(), attempt_timeout=60.0)
        finally:
            await queue.close()

    run(main)


def test_inline_and_file_bodies_both_reach_the_courier_and_leave_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hato.queue")
    clock = FakeClock()
    courier = ScriptedCourier()
    big = b"a line of the big body\r\n" * 3000  # 72,000 octets: a spool file

    async def main() -> tuple[str, str]:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                small_id = await commit_message(queue, b"small\r\n")
                big_id = await commit_message(queue, big)
                assert os.listdir(tmp_path / "messages") == [big_id]
                await eventually(lambda: caplog.text.count("event=removed") == 2)
            return small_id, big_id
        finally:
            await queue.close()

    small_id, big_id = run(main)
    by_id = {call.message.queue_id: call.message for call in courier.calls}
    assert (by_id[small_id].body, by_id[small_id].body_path) == (b"small\r\n", "")
    assert by_id[big_id].body is None
    assert Path(by_id[big_id].body_path) == tmp_path / "messages" / big_id
    assert os.listdir(tmp_path / "messages") == []
    assert recipient_rows(tmp_path) == []


def test_a_retry_after_hint_brings_the_retry_forward(tmp_path: Path) -> None:
    clock = FakeClock()
    full = TempFailed(Reply(452, "4.3.1", "disk full"), retry_after=10.0)
    courier = ScriptedCourier({"a@example.org": full})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock) as runner:
                await commit_message(queue, to=("a@example.org",))
                await eventually(lambda: recipient_rows(tmp_path)[0][2] == 1)
                # Sooner than the normal first retry (300 s), as the courier asked.
                assert recipient_rows(tmp_path)[0][3] == clock.now() + 10
                # The due scan, asleep for its 60 s when nothing was due, was woken by the
                # recorded retry and now plans to look when that retry is due.
                await eventually(lambda: runner._sleep_until == clock.now() + 10)
                courier.script.clear()
                clock.advance(10)
                runner.wake()  # the fake clock does not end real sleeps
                await eventually(lambda: recipient_rows(tmp_path) == [])
        finally:
            await queue.close()

    run(main)
    assert len(courier.calls) == 2


def test_a_retry_after_hint_never_delays_past_the_normal_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    lazy = TempFailed(Reply(451, "4.3.0", "later"), retry_after=10_000.0)
    courier = ScriptedCourier({"a@example.org": lazy})

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        try:
            async with running(queue, courier, clock):
                await commit_message(queue, to=("a@example.org",))
                await eventually(lambda: recipient_rows(tmp_path)[0][2] == 1)
                assert recipient_rows(tmp_path)[0][3] == clock.now() + 300
        finally:
            await queue.close()

    run(main)
