"""When the periodic reports go out: at the configured UTC hour, then every interval."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dnsserver import FakeResolver
from hato.boot.reload import decide
from hato.boot.reportwatch import next_boundary, report_task
from hato.reports import SqliteReportStore
from hato.reports.aggregate import Submitter
from hato.reports.sender import ReportSender, RunSummary
from kit import config
from kit.clock import FakeClock

BASE = config.config_text(server='data_dir = "data"')

DAY = 86400
MIDNIGHT = 1_764_979_200  # 2025-12-06 00:00:00 UTC


def test_daily_reports_at_the_configured_hour() -> None:
    assert next_boundary(MIDNIGHT + 3600, 0, DAY) == MIDNIGHT + DAY
    assert next_boundary(MIDNIGHT, 0, DAY) == MIDNIGHT + DAY  # just sent: the next one
    assert next_boundary(MIDNIGHT + 3600, 6, DAY) == MIDNIGHT + 6 * 3600
    assert next_boundary(MIDNIGHT + 7 * 3600, 6, DAY) == MIDNIGHT + DAY + 6 * 3600


def test_shorter_intervals_count_from_the_hour() -> None:
    assert next_boundary(MIDNIGHT + 5400, 0, 3600) == MIDNIGHT + 7200
    assert next_boundary(MIDNIGHT + 3600, 2, 6 * 3600) == MIDNIGHT + 2 * 3600
    assert next_boundary(MIDNIGHT + 3 * 3600, 2, 6 * 3600) == MIDNIGHT + 8 * 3600


def test_the_periodic_run_reports_up_to_the_boundary_and_a_reload_needs_a_restart(
    tmp_path: Path,
) -> None:
    settings = config.parse(
        "\n[reports]\nenabled = true\ninterval = 3600\n", Path("/srv"), base=BASE
    )
    boundary = MIDNIGHT + 5 * 3600
    clock = FakeClock(boundary - 0.01)  # the run waits 10 ms of real time, then reports
    store = SqliteReportStore(tmp_path / "reports.db")
    sender = Recording(store, FakeResolver(), Outbox(), clock, Submitter("o", "r@o.test", "o.test"))

    async def run() -> list[float]:
        task = asyncio.create_task(report_task(settings, sender, clock))
        async with asyncio.timeout(10):
            await sender.ran.wait()
        task.cancel()
        return sender.ends

    assert asyncio.run(run()) == [boundary]
    assert store.last_sent("dmarc") is None  # nothing recorded: nothing sent
    outcome = decide(config.parse("", Path("/srv"), base=BASE), settings, "hato.toml")
    assert not outcome.applied and outcome.restart == ("reports.enabled", "reports.interval")


class Outbox:
    async def __call__(self, mail_from: str, recipient: str, message: bytes) -> str:
        raise AssertionError("nothing to send")


class Recording(ReportSender):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ends: list[float] = []
        self.ran = asyncio.Event()

    async def send(self, end: float) -> RunSummary:
        self.ends.append(end)
        summary = await super().send(end)
        self.ran.set()
        return summary
