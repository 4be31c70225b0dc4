from __future__ import annotations

import random

import pytest

from hato.queue import QueueIdGenerator, is_queue_id
from kit.clock import FakeClock


def test_ids_are_short_filename_safe_and_unique() -> None:
    gen = QueueIdGenerator(FakeClock(), random.Random(1))
    ids = [gen.next() for _ in range(5000)]  # all in the same millisecond
    assert len(set(ids)) == 5000
    assert all(is_queue_id(i) and len(i) == 14 and i.isalnum() and i.isupper() for i in ids)


def test_ids_sort_by_time() -> None:
    clock = FakeClock()
    gen = QueueIdGenerator(clock, random.Random(2))
    ids = []
    for _ in range(200):
        ids.append(gen.next())
        ids.append(gen.next())
        clock.advance(0.0007)
    assert ids == sorted(ids)


def test_ids_keep_increasing_when_the_clock_steps_back() -> None:
    clock = FakeClock()
    gen = QueueIdGenerator(clock, random.Random(3))
    first = gen.next()
    clock.advance(-60)
    second = gen.next()
    assert second > first


def test_later_time_gives_a_later_id_whatever_the_randomness() -> None:
    clock = FakeClock()
    high = QueueIdGenerator(clock, random.Random(4))
    a = high.next()
    clock.advance(0.001)
    b = QueueIdGenerator(clock, random.Random(5)).next()
    assert a < b
    assert not is_queue_id("../etc/passwd") and not is_queue_id("0123456789ABCI")


def test_two_workers_never_make_the_same_id_in_one_millisecond() -> None:
    clock = FakeClock()
    # The same random start: without the slot every id of the two would be the same.
    first = QueueIdGenerator(clock, random.Random(7), slot=0)
    second = QueueIdGenerator(clock, random.Random(7), slot=1)
    ids = [gen.next() for _ in range(3000) for gen in (first, second)]
    assert len(set(ids)) == len(ids)
    last = QueueIdGenerator(clock, random.Random(7), slot=63)
    assert is_queue_id(last.next())


def test_an_id_slot_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.63"):
        QueueIdGenerator(FakeClock(), random.Random(1), slot=64)


def test_the_pairs_table_makes_the_characters_one_at_a_time_would() -> None:
    from hato.queue.ids import _encode, _make

    rng = random.Random(7)
    for _ in range(20_000):
        ms, seq = rng.getrandbits(50), rng.getrandbits(20)
        assert _make(ms, seq) == _encode(ms, 10) + _encode(seq, 4)
    assert _make(0, 0) == "0" * 14 and _make((1 << 50) - 1, (1 << 20) - 1) == "Z" * 14
