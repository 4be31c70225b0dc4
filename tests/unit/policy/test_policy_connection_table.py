"""The shared table under the mx connection limits (policy/connections.py, issue 15): keys that
share a home slot keep their own counts, deleting a key keeps every probe run intact, a full
table refuses rather than miscounts, and two processes never both take the last place."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from hato.policy import connections
from hato.policy.connections import (
    CONNECTIONS_TABLE,
    ConnectionLedger,
    forget_worker,
    reset,
    table_slots,
)

SLOTS = 64
BIG = 1_000_000  # a limit never reached


def _table(tmp_path: Path, workers: int = 2, slots: int = SLOTS) -> Path:
    path = tmp_path / CONNECTIONS_TABLE
    reset(path, slots=slots, workers=workers)
    return path


def _count(ledger: ConnectionLedger, client: str, listener: str = "mx") -> int:
    """Every worker's count of one key, as the table holds it (0: no such key)."""
    table = ledger._table
    i, found = table.find(*connections._key(listener, client))
    return table.total(i) if found else 0


def _used(ledger: ConnectionLedger) -> int:
    return ledger._table.used()


def _home(client: str, listener: str = "mx") -> int:
    return connections._key(listener, client)[1] & (SLOTS - 1)


def _sharing_a_home(home: int, n: int) -> list[str]:
    """`n` IPv4 clients whose keys hash to slot `home` of a 64-slot table."""
    found = [f"10.0.{i // 256}.{i % 256}" for i in range(65536)]
    same = [client for client in found if _home(client) == home]
    assert len(same) >= n
    return same[:n]


@pytest.mark.parametrize("home", [5, SLOTS - 2])  # the second run wraps past the last slot
def test_clients_sharing_a_home_slot_keep_their_own_counts(tmp_path: Path, home: int) -> None:
    ledger = ConnectionLedger(_table(tmp_path), 0)
    clients = _sharing_a_home(home, 5)
    for k, client in enumerate(clients):
        for _ in range(k + 1):
            assert ledger.claim("mx", client, BIG, 5)
    assert [_count(ledger, c) for c in clients] == [1, 2, 3, 4, 5]
    assert not ledger.claim("mx", clients[4], BIG, 5)  # its own limit, not its neighbours'
    assert ledger.claim("mx", clients[0], BIG, 5)
    assert _count(ledger, "*") == 16


@pytest.mark.parametrize("home", [5, SLOTS - 2])
def test_deleting_a_key_keeps_the_probe_run_after_it(tmp_path: Path, home: int) -> None:
    ledger = ConnectionLedger(_table(tmp_path), 0)
    clients = _sharing_a_home(home, 4)
    for client in clients:
        assert ledger.claim("mx", client, BIG, 5)
        assert ledger.claim("mx", client, BIG, 5)
    ledger.drop("mx", clients[1])
    ledger.drop("mx", clients[1])  # its key goes: the two after it move back
    assert _count(ledger, clients[1]) == 0
    assert [_count(ledger, c) for c in (clients[0], clients[2], clients[3])] == [2, 2, 2]
    assert _used(ledger) == 1 + 3
    ledger.drop("mx", clients[0])
    ledger.drop("mx", clients[0])  # the first of the run
    assert [_count(ledger, c) for c in clients] == [0, 0, 2, 2]
    assert ledger.claim("mx", clients[1], BIG, 5)  # back, at the end of the run
    assert [_count(ledger, c) for c in clients] == [0, 1, 2, 2]


def test_many_claims_and_drops_match_a_plain_count(tmp_path: Path) -> None:
    """Random claims and drops (a fixed seed) over a few clients crowded in a small table:
    after every step each key's count in the table is the one kept aside."""
    path = _table(tmp_path)
    ledgers = [ConnectionLedger(path, 0), ConnectionLedger(path, 1)]
    clients = [f"192.0.2.{n}" for n in range(30)]
    held: dict[tuple[int, str], int] = {}
    rng = random.Random(15)
    for _ in range(3000):
        worker, client = rng.randrange(2), rng.choice(clients)
        if rng.random() < 0.55:
            if ledgers[worker].claim("mx", client, 40, 3):
                held[worker, client] = held.get((worker, client), 0) + 1
        elif held.get((worker, client)):
            ledgers[worker].drop("mx", client)
            held[worker, client] -= 1
        for c in clients:
            assert _count(ledgers[0], c) == held.get((0, c), 0) + held.get((1, c), 0)
        assert _count(ledgers[0], "*") == sum(held.values()) <= 40
        assert _used(ledgers[0]) == 1 + sum(1 for c in clients if _count(ledgers[0], c))


def test_a_full_table_refuses_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = ConnectionLedger(_table(tmp_path), 0)
    room = SLOTS * 3 // 4 - 1  # three quarters of the slots, the listener's total among them
    for n in range(room):
        assert ledger.claim("mx", f"10.1.0.{n}", BIG, BIG)
    with caplog.at_level(logging.ERROR, logger="hato.connections"):
        assert not ledger.claim("mx", "10.1.1.1", BIG, BIG)  # a new key: refused
    assert "event=connection-table-full listener=mx client=10.1.1.1" in caplog.text
    assert ledger.claim("mx", "10.1.0.0", BIG, BIG)  # a key already there still counts
    assert _count(ledger, "10.1.1.1") == 0 and _count(ledger, "*") == room + 1
    ledger.drop("mx", "10.1.0.1")  # its last connection: its key goes
    assert ledger.claim("mx", "10.1.1.1", BIG, BIG)


def test_the_supervisors_size_never_fills(tmp_path: Path) -> None:
    """Every listener at its `max_connections`, each connection another client, from both
    workers: only the limits refuse."""
    limits = {"mx@a": 30, "mx@b": 20}
    path = _table(tmp_path, slots=table_slots(limits.values()))
    ledgers = [ConnectionLedger(path, 0), ConnectionLedger(path, 1)]
    for listener, limit in limits.items():
        for n in range(limit):
            assert ledgers[n % 2].claim(listener, f"203.0.113.{n}", limit, 1)
        assert not ledgers[0].claim(listener, "203.0.113.250", limit, 1)
    assert table_slots([1000]) >= 2 * 1000 and table_slots([1, 1]) == connections.MIN_SLOTS


def test_forgetting_a_worker_keeps_the_others_counts(tmp_path: Path) -> None:
    path = _table(tmp_path)
    first, second = ConnectionLedger(path, 0), ConnectionLedger(path, 1)
    clients = _sharing_a_home(SLOTS - 1, 4)
    for k, client in enumerate(clients):
        assert (first if k % 2 else second).claim("mx", client, BIG, 5)
        assert first.claim("mx", client, BIG, 5)
    forget_worker(path, 1)
    assert [_count(first, c) for c in clients] == [1, 2, 1, 2]
    assert _count(first, "*") == 6 and _used(first) == 5
    forget_worker(path, 0)
    assert [_count(first, c) for c in [*clients, "*"]] == [0] * 5 and _used(first) == 0


def test_a_key_left_twice_by_a_killed_worker_is_kept_once(tmp_path: Path) -> None:
    """A worker killed while a deletion moved a slot back leaves that slot in two places: the
    supervisor's `forget_worker` keeps one."""
    path = _table(tmp_path)
    first, second = ConnectionLedger(path, 0), ConnectionLedger(path, 1)
    assert first.claim("mx", "192.0.2.1", BIG, 5)
    assert second.claim("mx", "192.0.2.1", BIG, 5)
    table = first._table
    i, _ = table.find(*connections._key("mx", "192.0.2.1"))
    size = table.size
    slots = [connections._HEADER_SIZE + j * size for j in range(SLOTS)]
    spare = next(at for at in slots if not table.map[at + connections._KEY_AT])
    table.map[spare : spare + size] = table.map[slots[i] : slots[i] + size]
    forget_worker(path, 1)
    assert _count(first, "192.0.2.1") == 1 and _used(first) == 2
    first.drop("mx", "192.0.2.1")
    assert _count(first, "192.0.2.1") == 0 and _used(first) == 0


def test_a_symbolic_link_in_place_of_the_table_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / CONNECTIONS_TABLE).symlink_to(target)
    with pytest.raises(OSError):
        reset(tmp_path / CONNECTIONS_TABLE, slots=SLOTS, workers=2)
    assert target.read_bytes() == b"keep"


RACES = 2000


def _racer(path: Path, worker: int, client: str, limit: int, trail: Path) -> None:
    """A child process: claim, note the place taken, note it given back, drop; RACES times."""
    ledger = ConnectionLedger(path, worker)  # its own open file, as a worker's
    fd = os.open(trail, os.O_WRONLY | os.O_APPEND)
    for _ in range(RACES):
        if ledger.claim("mx", client, limit, limit):
            os.write(fd, b"+")  # after the place was taken ...
            os.write(fd, b"-")  # ... and before it is given back
            ledger.drop("mx", client)


@pytest.mark.parametrize("same_client", [True, False])  # a client's limit; the listener's total
def test_racing_processes_never_pass_the_limit(tmp_path: Path, same_client: bool) -> None:
    """Three processes claim and drop as fast as they can; each writes `+` once it holds a
    place and `-` before it drops it. Were a place ever taken twice, the file would show more
    `+` than the limit before their `-`."""
    limit, workers = 2, 3
    path = _table(tmp_path, workers=workers)
    trail = tmp_path / "trail"
    trail.touch()
    children = []
    for worker in range(workers):
        client = "192.0.2.1" if same_client else f"192.0.2.{worker}"
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            code = 1
            try:
                _racer(path, worker, client, limit, trail)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    held = most = 0
    for mark in trail.read_bytes():
        held += 1 if mark == ord("+") else -1
        most = max(most, held)
    assert held == 0 and 0 < most <= limit
    check = ConnectionLedger(path, 0)
    assert _count(check, "*") == 0 and _used(check) == 0  # every place given back


def test_cached_keys_are_the_computed_ones() -> None:
    """`_key` is cached (issue 15: a claim and a drop per connection): short and long keys (a
    digest past 90 octets) are what it computes, every time."""
    for listener, client in (("mx@127.0.0.1:25", "192.0.2.1"), ("x" * 120, "2001:db8::/64")):
        computed = connections._key.__wrapped__(listener, client)
        assert connections._key(listener, client) == computed
        assert connections._key(listener, client) == computed
    assert connections._key("x" * 120, "a")[0][0] == 255  # the long form
