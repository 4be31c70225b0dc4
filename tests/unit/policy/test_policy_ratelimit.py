"""Per-user sending limits and spike holds, on a fake clock."""

from __future__ import annotations

import pytest

from hato.model import logfmt
from hato.policy.decision import Accept, Defer
from hato.policy.ratelimit import HELD, RATE_LIMITED, SendLimiter, SendLimitSettings


class FakeClock:
    def __init__(self) -> None:
        self.t = 3600.0 * 1000  # on a minute boundary

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


NO_SPIKE = SendLimitSettings(messages_per_hour=5, recipients_per_hour=20, spike_recipients=0)


def test_messages_per_hour(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, NO_SPIKE)
    for _ in range(5):
        assert limiter.check_message("alice@example.org") == Accept()
        limiter.record("alice@example.org", 1)
        clock.t += 60
    assert limiter.check_message("Alice@Example.org") == Defer(RATE_LIMITED)
    assert RATE_LIMITED.code == 451 and RATE_LIMITED.enhanced == "4.7.1"
    assert limiter.check_message("bob@example.org") == Accept()
    # the first message (at minute 0) leaves the window in minute 60; we are at minute 5
    clock.t += 55 * 60 - 1
    assert limiter.check_message("alice@example.org") == Defer(RATE_LIMITED)
    clock.t += 1
    assert limiter.check_message("alice@example.org") == Accept()
    assert limiter.usage("alice@example.org") == (4, 4)


def test_recipients_per_hour_counts_this_message(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, NO_SPIKE)
    limiter.record("alice", 15)
    assert limiter.check_recipients("alice", 5) == Accept()
    assert limiter.check_recipients("alice", 6) == Defer(RATE_LIMITED)


def test_zero_means_no_limit(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(0, 0, spike_recipients=0))
    for _ in range(10_000):
        limiter.record("alice", 100)
    assert limiter.check_message("alice") == Accept()
    assert limiter.check_recipients("alice", 10_000) == Accept()


def test_spike_holds_the_user_and_alerts_once(clock: FakeClock) -> None:
    settings = SendLimitSettings(
        messages_per_hour=0, recipients_per_hour=0, spike_recipients=100, spike_window=300
    )
    limiter = SendLimiter(clock, settings)
    alerts = []
    for _ in range(12):
        alerts.append(limiter.record("mallory@example.org", 10))
        clock.t += 10
    assert alerts[:9] == [None] * 9
    alert = alerts[9]
    assert alert is not None and alerts[10:] == [None, None]
    assert (alert.recipients, alert.messages, alert.held) == (100, 10, True)
    line = logfmt(alert.event, **alert.fields())
    assert line.startswith("event=sending-spike user=mallory@example.org recipients=100")
    assert limiter.check_message("mallory@example.org") == Defer(HELD)
    assert limiter.check_recipients("mallory@example.org", 1) == Defer(HELD)
    assert HELD.code == 451 and HELD.enhanced == "4.7.1"
    assert limiter.held_users() == ["mallory@example.org"]
    assert limiter.check_message("alice@example.org") == Accept()


def test_hold_ends_after_hold_time_or_on_release(clock: FakeClock) -> None:
    settings = SendLimitSettings(spike_recipients=50, hold_time=3600)
    limiter = SendLimiter(clock, settings)
    assert limiter.record("a", 50) is not None
    clock.t += 3599
    assert limiter.held("a")
    clock.t += 1
    assert not limiter.held("a")
    assert limiter.record("b", 60) is not None
    assert limiter.release("B")
    assert limiter.check_message("b") == Accept()
    assert not limiter.release("b")


def test_hold_time_zero_waits_for_the_admin(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(spike_recipients=50, hold_time=0))
    limiter.record("a", 50)
    clock.t += 86_400 * 365
    assert limiter.check_message("a") == Defer(HELD)


def test_spread_out_sending_is_no_spike(clock: FakeClock) -> None:
    settings = SendLimitSettings(0, 0, spike_recipients=100, spike_window=300)
    limiter = SendLimiter(clock, settings)
    for _ in range(60):
        assert limiter.record("newsletter", 15) is None  # 75 per 5 minutes
        clock.t += 60


def test_alert_without_hold(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(spike_recipients=10, spike_hold=False))
    alert = limiter.record("a", 10)
    assert alert is not None and not alert.held
    assert alert.fields()["held"] == "no"
    assert limiter.check_message("a") == Accept()


def test_users_tracked_are_bounded(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(messages_per_hour=1, max_users=10))
    for i in range(100):
        limiter.record(f"user{i}", 1)
    assert limiter.check_message("user99") == Defer(RATE_LIMITED)
    assert limiter.check_message("user0") == Accept()  # forgotten (least recently active)


@pytest.mark.parametrize(
    "kwargs",
    [{"messages_per_hour": -1}, {"spike_window": 0}, {"spike_window": 7200}, {"hold_time": -1}],
)
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendLimitSettings(**kwargs)  # type: ignore[arg-type]
