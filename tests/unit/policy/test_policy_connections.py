"""The mx connection limits across worker processes (issue 15 item 1): every worker counts in
one shared table, so a client's limit and a listener's total hold whichever worker accepts."""

from __future__ import annotations

from pathlib import Path

from hato.policy.connections import CONNECTIONS_TABLE, ConnectionLedger, forget_worker, reset
from hato.server.context import ListenerState


def _ledgers(tmp_path: Path) -> tuple[Path, ConnectionLedger, ConnectionLedger]:
    path = tmp_path / CONNECTIONS_TABLE
    reset(path, slots=64, workers=2)
    return path, ConnectionLedger(path, 0), ConnectionLedger(path, 1)


def test_a_client_limit_holds_across_workers(tmp_path: Path) -> None:
    _, first, second = _ledgers(tmp_path)
    assert first.claim("mx", "192.0.2.1", 100, 3)
    assert second.claim("mx", "192.0.2.1", 100, 3)
    assert first.claim("mx", "192.0.2.1", 100, 3)
    assert not second.claim("mx", "192.0.2.1", 100, 3)  # its own count is 1: 3 in all
    assert not first.claim("mx", "192.0.2.1", 100, 3)
    assert second.claim("mx", "192.0.2.2", 100, 3)  # another client
    second.drop("mx", "192.0.2.1")
    assert first.claim("mx", "192.0.2.1", 100, 3)  # a place came free in the other worker


def test_a_listener_total_holds_across_workers(tmp_path: Path) -> None:
    _, first, second = _ledgers(tmp_path)
    assert first.claim("mx", "192.0.2.1", 2, 10)
    assert second.claim("mx", "192.0.2.2", 2, 10)
    assert not first.claim("mx", "192.0.2.3", 2, 10)
    assert second.claim("other", "192.0.2.3", 2, 10)  # counted per listener


def test_a_dead_workers_connections_stop_counting(tmp_path: Path) -> None:
    path, first, second = _ledgers(tmp_path)
    for _ in range(3):
        assert second.claim("mx", "192.0.2.1", 100, 3)
    assert not first.claim("mx", "192.0.2.1", 100, 3)
    forget_worker(path, 1)
    assert first.claim("mx", "192.0.2.1", 100, 3)
    reset(path, slots=64, workers=2)  # the supervisor's start: nothing is open
    for _ in range(3):
        assert second.claim("mx", "192.0.2.1", 100, 3)


def test_listener_state_takes_the_place_at_admit_and_counts_it_once(tmp_path: Path) -> None:
    _, first, second = _ledgers(tmp_path)
    one = ListenerState("mx", max_connections=100, max_per_ip=2, shared=first)
    two = ListenerState("mx", max_connections=100, max_per_ip=2, shared=second)
    assert one.admit("192.0.2.1")
    one.reserve("192.0.2.1")
    assert two.admit("192.0.2.1")
    two.reserve("192.0.2.1")
    assert not one.admit("192.0.2.1") and not two.admit("192.0.2.1")
    two.release("192.0.2.1")
    assert one.admit("192.0.2.1")
    one.reserve("192.0.2.1")
    # Port 465: admitted at accept, then the session enters without asking again.
    one.release("192.0.2.1")
    one.reserve("192.0.2.1")
    assert not two.admit("192.0.2.1")
