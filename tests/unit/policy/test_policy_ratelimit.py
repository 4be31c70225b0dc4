"""Per-user sending limits and spike holds, on a fake clock; reservations shared by processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from hato.model import logfmt
from hato.policy.decision import Accept, Decision, Defer
from hato.policy.ratelimit import (
    HELD,
    RATE_LIMITED,
    Reservation,
    SendLimiter,
    SendLimitSettings,
    SpikeAlert,
)
from kit.clock import FakeClock

START = 3600.0 * 1000  # on a minute boundary


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START, START)


def record(limiter: SendLimiter, user: str, recipients: int) -> SpikeAlert | None:
    """One accepted message: reserved at MAIL and RCPT, confirmed after the 250."""
    reservation = limiter.reserve_message(user)
    assert isinstance(reservation, Reservation), reservation
    assert limiter.reserve_recipient(reservation, recipients) == Accept()
    return limiter.confirm(reservation)


def check_message(limiter: SendLimiter, user: str) -> Decision:
    """What MAIL FROM would be answered (the reservation is given back at once)."""
    reservation = limiter.reserve_message(user)
    if not isinstance(reservation, Reservation):
        return reservation
    limiter.release(reservation)
    return Accept()


def check_recipients(limiter: SendLimiter, user: str, count: int) -> Decision:
    reservation = limiter.reserve_message(user)
    if not isinstance(reservation, Reservation):
        return reservation
    decision = limiter.reserve_recipient(reservation, count)
    limiter.release(reservation)
    return decision


NO_SPIKE = SendLimitSettings(messages_per_hour=5, recipients_per_hour=20, spike_recipients=0)


def test_messages_per_hour(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, NO_SPIKE)
    for _ in range(5):
        assert check_message(limiter, "alice@example.org") == Accept()
        record(limiter, "alice@example.org", 1)
        clock.advance(60)
    assert check_message(limiter, "Alice@Example.org") == Defer(RATE_LIMITED)
    assert RATE_LIMITED.code == 451 and RATE_LIMITED.enhanced == "4.7.1"
    assert check_message(limiter, "bob@example.org") == Accept()
    # the first message (at minute 0) leaves the window in minute 60; we are at minute 5
    clock.advance(55 * 60 - 1)
    assert check_message(limiter, "alice@example.org") == Defer(RATE_LIMITED)
    clock.advance(1)
    assert check_message(limiter, "alice@example.org") == Accept()
    assert limiter.usage("alice@example.org") == (4, 4)


def test_recipients_per_hour_counts_this_message(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, NO_SPIKE)
    record(limiter, "alice", 15)
    assert check_recipients(limiter, "alice", 5) == Accept()
    assert check_recipients(limiter, "alice", 6) == Defer(RATE_LIMITED)


def test_zero_means_no_limit(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(0, 0, spike_recipients=0))
    for _ in range(1000):
        record(limiter, "alice", 100)
    assert check_message(limiter, "alice") == Accept()
    assert check_recipients(limiter, "alice", 10_000) == Accept()


def test_spike_holds_the_user_and_alerts_once(clock: FakeClock) -> None:
    settings = SendLimitSettings(
        messages_per_hour=0, recipients_per_hour=0, spike_recipients=100, spike_window=300
    )
    limiter = SendLimiter(clock, settings)
    alerts = []
    for _ in range(10):
        alerts.append(record(limiter, "mallory@example.org", 10))
        clock.advance(10)
    assert alerts[:9] == [None] * 9
    alert = alerts[9]
    assert alert is not None
    assert (alert.recipients, alert.messages, alert.held) == (100, 10, True)
    line = logfmt("sending-spike", **alert.fields())
    assert line.startswith("event=sending-spike user=mallory@example.org recipients=100")
    assert check_message(limiter, "mallory@example.org") == Defer(HELD)
    assert check_recipients(limiter, "mallory@example.org", 1) == Defer(HELD)
    assert HELD.code == 451 and HELD.enhanced == "4.7.1"
    assert limiter.held_users() == ["mallory@example.org"]
    assert check_message(limiter, "alice@example.org") == Accept()


def test_hold_ends_after_hold_time_or_on_release(clock: FakeClock) -> None:
    settings = SendLimitSettings(spike_recipients=50, hold_time=3600)
    limiter = SendLimiter(clock, settings)
    assert record(limiter, "a", 50) is not None
    clock.advance(3599)
    assert limiter.held("a")
    clock.advance(1)
    assert not limiter.held("a")
    assert record(limiter, "b", 60) is not None
    assert limiter.unhold("B")
    assert check_message(limiter, "b") == Accept()
    assert not limiter.unhold("b")


def test_hold_time_zero_waits_for_the_admin(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(spike_recipients=50, hold_time=0))
    record(limiter, "a", 50)
    clock.advance(86_400 * 365)
    assert check_message(limiter, "a") == Defer(HELD)


def test_spread_out_sending_is_no_spike(clock: FakeClock) -> None:
    settings = SendLimitSettings(0, 0, spike_recipients=100, spike_window=300)
    limiter = SendLimiter(clock, settings)
    for _ in range(60):
        assert record(limiter, "newsletter", 15) is None  # 75 per 5 minutes
        clock.advance(60)


def test_alert_without_hold(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(spike_recipients=10, spike_hold=False))
    alert = record(limiter, "a", 10)
    assert alert is not None and not alert.held
    assert alert.fields()["held"] == "no"
    assert check_message(limiter, "a") == Accept()
    assert record(limiter, "a", 10) is None  # one alert per burst, not one per message


def test_a_reservation_counts_at_once_and_a_release_gives_it_back(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, NO_SPIKE)
    first = limiter.reserve_message("alice")
    second = limiter.reserve_message("alice")
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    for _ in range(20):  # the 20 recipients of the hour, neither message confirmed yet
        assert limiter.reserve_recipient(first) == Accept()
    assert limiter.reserve_recipient(second) == Defer(RATE_LIMITED)
    assert limiter.usage("alice") == (2, 20)
    limiter.release(first)  # RSET, a refused DATA, a lost connection
    assert limiter.usage("alice") == (1, 0)
    assert limiter.reserve_recipient(second, 20) == Accept()
    assert limiter.confirm(second) is None
    limiter.release(second)  # too late: a confirmed message stays counted
    assert limiter.usage("alice") == (1, 20)


def test_two_processes_share_the_limits_file(clock: FakeClock, tmp_path: Path) -> None:
    one = SendLimiter(clock, NO_SPIKE, tmp_path / "limits.db")
    two = SendLimiter(clock, NO_SPIKE, tmp_path / "limits.db")
    reservation = one.reserve_message("alice")
    assert isinstance(reservation, Reservation)
    assert one.reserve_recipient(reservation, 15) == Accept()
    assert check_recipients(two, "alice", 6) == Defer(RATE_LIMITED)
    assert check_recipients(two, "alice", 5) == Accept()
    one.close()
    two.close()
    assert (tmp_path / "limits.db").stat().st_mode & 0o777 == 0o600


def _race(
    path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[int]
) -> None:
    limiter = SendLimiter(
        FakeClock(START, START), SendLimitSettings(0, 100, spike_recipients=0), Path(path)
    )
    start.wait()
    accepted = 0
    for _ in range(10):
        reservation = limiter.reserve_message("alice")
        assert isinstance(reservation, Reservation)
        for _ in range(10):
            accepted += isinstance(limiter.reserve_recipient(reservation), Accept)
        limiter.confirm(reservation)
    out.put(accepted)


def test_processes_racing_for_the_last_recipients_never_exceed_the_limit(tmp_path: Path) -> None:
    """Four processes (workers) each try 100 recipients against a limit of 100 an hour."""
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    path = str(tmp_path / "limits.db")
    SendLimiter(
        FakeClock(START, START), path=Path(path)
    ).close()  # created once, as the supervisor does
    procs = [context.Process(target=_race, args=(path, start, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sum(results) == 100, results


@pytest.mark.parametrize(
    "kwargs",
    [{"messages_per_hour": -1}, {"spike_window": 0}, {"spike_window": 7200}, {"hold_time": -1}],
)
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendLimitSettings(**kwargs)  # type: ignore[arg-type]


def _writes(limiter: SendLimiter) -> list[str]:
    """The write statements `limiter` runs from now on (SQLite's trace callback)."""
    statements: list[str] = []
    db = limiter._db
    assert db is not None
    db.set_trace_callback(statements.append)
    return statements


def _transactions(statements: list[str]) -> int:
    return sum(statement.startswith("BEGIN IMMEDIATE") for statement in statements)


OFF = SendLimitSettings(0, 0, spike_recipients=0)


def test_with_every_limit_off_a_message_writes_nothing(clock: FakeClock, tmp_path: Path) -> None:
    """Issue 15 item 4: three write transactions per message were ~10 % of the event loop."""
    limiter = SendLimiter(clock, OFF, tmp_path / "limits.db")
    statements = _writes(limiter)
    for recipients in (1, 5):
        record(limiter, "alice", recipients)
        assert check_recipients(limiter, "alice", 3) == Accept()  # reserved, then released
    assert all(statement.startswith("SELECT") for statement in statements), statements
    assert limiter.usage("alice") == (0, 0)  # nothing is counted for a limit that is off
    limiter.close()


@pytest.mark.parametrize(
    ("settings", "per_message", "usage"),
    [
        (SendLimitSettings(5, 0, spike_recipients=0), 1, (3, 0)),  # MAIL
        (SendLimitSettings(0, 20, spike_recipients=0), 1, (3, 3)),  # the first RCPT
        (SendLimitSettings(0, 0, spike_recipients=50), 1, (3, 3)),  # RCPT; the 250 reads
        (SendLimitSettings(5, 20, spike_recipients=50), 2, (3, 3)),  # MAIL, RCPT (were 3)
    ],
)
def test_a_limit_that_is_on_costs_one_transaction_where_it_counts(
    clock: FakeClock,
    tmp_path: Path,
    settings: SendLimitSettings,
    per_message: int,
    usage: tuple[int, int],
) -> None:
    limiter = SendLimiter(clock, settings, tmp_path / "limits.db")
    statements = _writes(limiter)
    for _ in range(3):
        assert record(limiter, "alice", 1) is None
    assert _transactions(statements) == 3 * per_message, statements
    assert limiter.usage("alice") == usage
    limiter.close()


def test_a_hold_set_by_another_process_counts_at_once_with_every_limit_off(
    clock: FakeClock, tmp_path: Path
) -> None:
    off = SendLimiter(clock, OFF, tmp_path / "limits.db")
    spiking = SendLimiter(clock, SendLimitSettings(spike_recipients=5), tmp_path / "limits.db")
    reservation = off.reserve_message("alice")
    assert isinstance(reservation, Reservation)
    assert record(spiking, "alice", 5) is not None  # another worker holds alice
    assert off.reserve_recipient(reservation) == Defer(HELD)  # the next RCPT, mid-transaction
    assert check_message(off, "alice") == Defer(HELD)
    assert spiking.unhold("alice")  # the admin releases her
    assert check_message(off, "alice") == Accept()
    off.close()
    spiking.close()


def test_a_message_counts_from_the_minute_of_its_250(clock: FakeClock) -> None:
    limiter = SendLimiter(clock, SendLimitSettings(1, 0, spike_recipients=0))
    clock.advance(59)
    reservation = limiter.reserve_message("alice")  # minute 0
    assert isinstance(reservation, Reservation)
    clock.advance(2)
    assert limiter.confirm(reservation) is None  # minute 1
    clock.advance(59 * 60)  # minute 60: minute 0 has left the window, minute 1 has not
    assert check_message(limiter, "alice") == Defer(RATE_LIMITED)
    clock.advance(60)
    assert check_message(limiter, "alice") == Accept()
