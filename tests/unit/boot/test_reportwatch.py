"""When the periodic reports go out: at the configured UTC hour, then every interval."""

from __future__ import annotations

from hato.boot.reportwatch import next_boundary

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
