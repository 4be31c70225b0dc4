from __future__ import annotations

import pytest
from queue_fakes import FixedRng

from hato.model import Reply
from hato.queue import Schedule, backoff, expired_reply, is_expired, retry_at

DAY = 86400.0


def test_backoff_doubles_from_five_minutes_and_caps_near_67_minutes() -> None:
    s = Schedule()
    mid = FixedRng(0.5)  # no jitter at the middle of the range
    assert [backoff(s, n, mid) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert backoff(s, 10_000, mid) == 4000


def test_jitter_spreads_within_the_configured_fraction() -> None:
    s = Schedule(jitter=0.2)
    assert backoff(s, 1, FixedRng(0.0)) == pytest.approx(240)
    assert backoff(s, 1, FixedRng(0.999999)) == pytest.approx(360, rel=1e-4)
    assert backoff(Schedule(jitter=0.0), 1, FixedRng(0.0)) == 300


def test_retry_at_is_pulled_in_to_the_deadline_then_gives_up() -> None:
    s = Schedule()
    rng = FixedRng(0.5)
    t0 = 1000.0
    assert retry_at(s, attempts=1, received_at=t0, now=t0 + 10, rng=rng) == t0 + 310
    near_end = t0 + 5 * DAY - 100
    assert retry_at(s, attempts=30, received_at=t0, now=near_end, rng=rng) == t0 + 5 * DAY
    assert retry_at(s, attempts=31, received_at=t0, now=t0 + 5 * DAY, rng=rng) is None
    assert is_expired(s, received_at=t0, now=t0 + 5 * DAY)
    assert not is_expired(s, received_at=t0, now=t0 + 5 * DAY - 1)


def test_values_are_configurable_and_checked() -> None:
    s = Schedule(first_retry=60, max_backoff=120, max_lifetime=3600, jitter=0)
    assert [backoff(s, n, FixedRng()) for n in (1, 2, 3)] == [60, 120, 120]
    with pytest.raises(ValueError):
        Schedule(first_retry=600, max_backoff=300)
    with pytest.raises(ValueError):
        Schedule(jitter=1.0)
    with pytest.raises(ValueError):
        backoff(s, 0, FixedRng())


def test_expired_reply_says_4_4_7_and_keeps_the_temporary_code() -> None:
    assert expired_reply(Reply(421, "4.7.0", "try later")) == Reply(
        421, "4.4.7", "delivery time expired"
    )
    assert expired_reply(None).code == 451
    assert expired_reply(None).enhanced == "4.4.7"
