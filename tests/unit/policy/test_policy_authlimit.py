"""AUTH failure throttling on a fake clock: delays, blocks, windows, bounded memory."""

from __future__ import annotations

import pytest

from hato.policy.authlimit import (
    AUTH_BLOCKED,
    AUTH_FAILED,
    AuthThrottle,
    AuthThrottleSettings,
    client_key,
)
from kit.clock import FakeClock

SETTINGS = AuthThrottleSettings(
    failure_delay=1.0,
    max_failure_delay=16.0,
    max_failures=10,
    max_account_failures=15,
    failure_window=600.0,
    block_time=900.0,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(50_000.0, 50_000.0)


def test_delay_doubles_per_failure_and_is_capped(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    assert throttle.delay_for("192.0.2.1", "alice@example.org") == 0.0
    delays = [throttle.record_failure("192.0.2.1", "alice@example.org").delay for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert throttle.delay_for("192.0.2.1", "bob@example.org") == 16.0  # same client


def test_failures_answer_535_until_the_limit_then_421_and_block(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    failures = [throttle.record_failure("192.0.2.1", f"user{i}") for i in range(10)]
    assert [f.reply for f in failures[:9]] == [AUTH_FAILED] * 9
    assert AUTH_FAILED.code == 535 and AUTH_FAILED.enhanced == "5.7.8"
    assert failures[9].reply == AUTH_BLOCKED and failures[9].blocked
    assert AUTH_BLOCKED.code == 421 and AUTH_BLOCKED.enhanced == "4.7.0"
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.2")
    clock.advance(899)
    assert throttle.blocked("192.0.2.1")
    clock.advance(2)
    assert not throttle.blocked("192.0.2.1")


def test_failures_outside_the_window_are_forgotten(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    for _ in range(9):
        throttle.record_failure("192.0.2.1", "alice")
    clock.advance(601)
    failure = throttle.record_failure("192.0.2.1", "alice")
    assert not failure.blocked
    assert failure.client_failures == 1
    assert failure.delay == 1.0


def test_one_account_guessed_from_many_clients_slows_them_but_blocks_nobody(
    clock: FakeClock,
) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    results = [throttle.record_failure(f"198.51.100.{i}", "Alice@Example.org") for i in range(40)]
    assert not any(r.blocked for r in results)
    assert [r.reply for r in results] == [AUTH_FAILED] * 40
    assert results[13].delay == 16.0  # the account's count drives the delay for fresh clients
    assert [r.account_alert for r in results].count(True) == 1 and results[14].account_alert
    assert not any(throttle.blocked(f"198.51.100.{i}") for i in range(40))
    # The owner's typo from a fresh address waits, but is neither blocked nor locked out.
    typo = throttle.record_failure("203.0.113.1", "alice@example.org")
    assert (typo.reply, typo.blocked, typo.delay) == (AUTH_FAILED, False, 16.0)


def test_a_known_client_of_the_account_is_not_slowed_by_others_failures(
    clock: FakeClock,
) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    throttle.record_success("203.0.113.1", "alice@example.org")  # alice's usual address
    for i in range(30):
        throttle.record_failure(f"198.51.100.{i}", "alice@example.org")
    assert throttle.delay_for("198.51.100.99", "alice@example.org") == 16.0
    typo = throttle.record_failure("203.0.113.1", "ALICE@example.org")
    assert (typo.reply, typo.delay) == (AUTH_FAILED, 1.0)  # only her own count
    # The trust ends after trust_time.
    clock.advance(SETTINGS.trust_time + 1)
    assert throttle.delay_for("203.0.113.1", "alice@example.org") == 0.0  # window passed too
    assert throttle.known_clients() == 0


def test_success_clears_the_client_but_not_the_account(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    for _ in range(3):
        throttle.record_failure("192.0.2.1", "alice")
    throttle.record_success("192.0.2.1", "alice")
    assert throttle.record_failure("192.0.2.1", "alice").delay == 1.0
    # Another client still sees the account's four failures.
    assert throttle.delay_for("192.0.2.2", "alice") == 8.0


def test_ipv6_clients_are_counted_per_64(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    for i in range(10):
        throttle.record_failure(f"2001:db8:0:1::{i + 1:x}", None)
    assert throttle.blocked("2001:db8:0:1:ffff::1")
    assert not throttle.blocked("2001:db8:0:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::/64"


def test_unblock(clock: FakeClock) -> None:
    throttle = AuthThrottle(clock, SETTINGS)
    for _ in range(10):
        throttle.record_failure("192.0.2.1", None)
    assert throttle.unblock("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")
    assert throttle.record_failure("192.0.2.1", None).client_failures == 1


def test_memory_is_bounded(clock: FakeClock) -> None:
    settings = AuthThrottleSettings(max_failures=1, max_entries=100)
    throttle = AuthThrottle(clock, settings)
    for i in range(1000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert throttle.sizes() == (100, 100, 100)
    assert throttle.blocked("10.0.3.231")  # the most recent stay
    assert not throttle.blocked("10.0.0.0")  # the oldest went first


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        AuthThrottleSettings(max_failures=0)
    with pytest.raises(ValueError):
        AuthThrottleSettings(block_time=-1)
