"""delivery/egress.py: when refused or timed-out MX connections mean port 25 is blocked."""

from __future__ import annotations

import logging

import pytest

from hato.delivery.egress import BLOCKED_AFTER_HOSTS, RECHECK_SECONDS, EgressMonitor
from kit.clock import T0, FakeClock


def test_one_host_failing_many_times_is_not_a_blocked_network() -> None:
    monitor = EgressMonitor(FakeClock(T0, T0))
    for _ in range(20):
        monitor.connect_failed("mx.down.example")
    assert not monitor.blocked() and monitor.problems(fallback=False) == []


def test_five_different_hosts_block_once_and_a_connection_unblocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hato.delivery.egress")
    clock = FakeClock(T0, T0)
    monitor = EgressMonitor(clock)
    for n in range(BLOCKED_AFTER_HOSTS - 1):
        monitor.connect_failed(f"MX{n}.example")
    assert not monitor.blocked()
    monitor.connect_failed("mx4.example")
    monitor.connect_failed("mx5.example")
    assert monitor.blocked_since == clock.now()
    [line] = monitor.problems(fallback=False)
    assert line.startswith("port 25 appears blocked on this network since 2027-01-15 08:00:00")
    assert "configure a smarthost: [smarthost]" in line
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=egress-blocked"]
    monitor.connected()
    assert not monitor.blocked()
    assert caplog.records[-1].getMessage() == "event=egress-unblocked"


def test_a_success_in_between_starts_the_count_again() -> None:
    monitor = EgressMonitor(FakeClock(T0, T0))
    for n in range(BLOCKED_AFTER_HOSTS - 1):
        monitor.connect_failed(f"mx{n}.example")
    monitor.connected()
    monitor.connect_failed("mx9.example")
    assert not monitor.blocked()


def test_while_blocked_one_attempt_an_hour_probes_mx() -> None:
    clock = FakeClock(T0, T0)
    monitor = EgressMonitor(clock)
    assert not monitor.use_fallback()
    for n in range(BLOCKED_AFTER_HOSTS):
        monitor.connect_failed(f"mx{n}.example")
    assert monitor.use_fallback() and monitor.use_fallback()
    clock.advance(RECHECK_SECONDS)
    assert not monitor.use_fallback()  # this one goes to MX
    assert monitor.use_fallback()
