"""AUTH failure throttling on a fake clock: delays, blocks, windows, bounded memory; in one
process's memory and in the SQLite file the workers share (policy/authlimit_sqlite.py) alike."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hato.policy.authlimit import (
    AUTH_BLOCKED,
    AUTH_FAILED,
    AuthThrottle,
    AuthThrottleSettings,
    client_key,
)
from hato.policy.authlimit_sqlite import SqliteAuthThrottle
from kit.clock import FakeClock

SETTINGS = AuthThrottleSettings(
    failure_delay=1.0,
    max_failure_delay=16.0,
    max_failures=10,
    max_account_failures=15,
    failure_window=600.0,
    block_time=900.0,
)


Make = Callable[..., AuthThrottle]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(50_000.0, 50_000.0)


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """`AuthThrottle(clock, settings)`, or the shared one on a file in `tmp_path`."""
    made: list[AuthThrottle] = []

    def throttle(clock: FakeClock, settings: AuthThrottleSettings | None = None) -> AuthThrottle:
        if request.param == "memory":
            made.append(AuthThrottle(clock, settings))
        else:
            made.append(SqliteAuthThrottle(clock, settings, tmp_path / "authlimit.db"))
        return made[-1]

    yield throttle
    for one in made:
        one.close()


def test_delay_doubles_per_failure_and_is_capped(clock: FakeClock, make: Make) -> None:
    throttle = make(clock, SETTINGS)
    assert throttle.delay_for("192.0.2.1", "alice@example.org") == 0.0
    delays = [throttle.record_failure("192.0.2.1", "alice@example.org").delay for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert throttle.delay_for("192.0.2.1", "bob@example.org") == 16.0  # same client


def test_failures_answer_535_until_the_limit_then_421_and_block(
    clock: FakeClock, make: Make
) -> None:
    throttle = make(clock, SETTINGS)
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


def test_failures_outside_the_window_are_forgotten(clock: FakeClock, make: Make) -> None:
    throttle = make(clock, SETTINGS)
    for _ in range(9):
        throttle.record_failure("192.0.2.1", "alice")
    clock.advance(601)
    failure = throttle.record_failure("192.0.2.1", "alice")
    assert not failure.blocked
    assert failure.client_failures == 1
    assert failure.delay == 1.0


def test_one_account_guessed_from_many_clients_slows_them_but_blocks_nobody(
    clock: FakeClock, make: Make
) -> None:
    throttle = make(clock, SETTINGS)
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
    clock: FakeClock, make: Make
) -> None:
    throttle = make(clock, SETTINGS)
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


def test_success_clears_the_client_but_not_the_account(clock: FakeClock, make: Make) -> None:
    throttle = make(clock, SETTINGS)
    for _ in range(3):
        throttle.record_failure("192.0.2.1", "alice")
    throttle.record_success("192.0.2.1", "alice")
    assert throttle.record_failure("192.0.2.1", "alice").delay == 1.0
    # Another client still sees the account's four failures.
    assert throttle.delay_for("192.0.2.2", "alice") == 8.0


def test_ipv6_clients_are_counted_per_64(clock: FakeClock, make: Make) -> None:
    throttle = make(clock, SETTINGS)
    for i in range(10):
        throttle.record_failure(f"2001:db8:0:1::{i + 1:x}", None)
    assert throttle.blocked("2001:db8:0:1:ffff::1")
    assert not throttle.blocked("2001:db8:0:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8::1") == "2001:db8::/64"


def test_unblock(clock: FakeClock, make: Make) -> None:
    throttle = make(clock, SETTINGS)
    for _ in range(10):
        throttle.record_failure("192.0.2.1", None)
    assert throttle.unblock("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")
    assert throttle.record_failure("192.0.2.1", None).client_failures == 1


def test_memory_is_bounded(clock: FakeClock, make: Make) -> None:
    settings = AuthThrottleSettings(max_failures=1, max_entries=100)
    throttle = make(clock, settings)
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


def test_workers_on_one_file_share_counts_blocks_and_known_clients(
    clock: FakeClock, tmp_path: Path
) -> None:
    """Two workers' throttles on one DATA_DIR/authlimit.db: as one throttle."""
    path = tmp_path / "authlimit.db"
    first, second = (SqliteAuthThrottle(clock, SETTINGS, path) for _ in range(2))
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        for attempt in range(9):
            worker = (first, second)[attempt % 2]
            assert not worker.record_failure("192.0.2.1", "alice").blocked
        assert second.delay_for("192.0.2.1", None) == 16.0
        assert first.record_failure("192.0.2.1", "alice").reply == AUTH_BLOCKED
        assert first.blocked("192.0.2.1") and second.blocked("192.0.2.1")
        assert second.unblock("192.0.2.1")
        assert not first.blocked("192.0.2.1")
        # A login on one worker makes the client known on the other.
        first.record_success("203.0.113.1", "bob")
        for i in range(20):
            second.record_failure(f"198.51.100.{i}", "bob")
        assert second.delay_for("203.0.113.1", "bob") == 0.0
        assert second.delay_for("203.0.113.2", "bob") == 16.0
    finally:
        first.close()
        second.close()
    # A block outlives a restart (the file stays; times are the wall clock's).
    again = SqliteAuthThrottle(clock, SETTINGS, path)
    try:
        for _ in range(10):
            again.record_failure("192.0.2.9", None)
        again.close()
        again = SqliteAuthThrottle(clock, SETTINGS, path)
        assert again.blocked("192.0.2.9")
    finally:
        again.close()


def test_the_file_drops_what_has_passed(clock: FakeClock, tmp_path: Path) -> None:
    throttle = SqliteAuthThrottle(clock, SETTINGS, tmp_path / "authlimit.db")
    for i in range(10):
        throttle.record_failure("192.0.2.1", f"user{i}")
    throttle.record_success("192.0.2.2", "alice")
    assert throttle.sizes() == (1, 10, 1)
    clock.advance(SETTINGS.trust_time + 1)
    throttle.record_failure("192.0.2.3", None)
    assert throttle.sizes() == (1, 0, 0)
    assert throttle.known_clients() == 0
    throttle.close()


def test_client_key_cached_answers_as_parsed_and_refuses_every_time() -> None:
    """`client_key` is cached (issue 15); a cached answer is the parse's, and a text that is no
    address is refused on every call (an exception is not cached)."""
    for ip in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8:0:1::5", "2001:db8:0:1:ffff::1"):
        assert client_key(ip) == client_key.__wrapped__(ip) == client_key(ip)
    for _ in range(2):
        with pytest.raises(ValueError):
            client_key("not an address")
