"""Queue ids: short, unique, sortable by time, safe as file names.

Must not import anything of hato but model.

An id is 14 characters of Crockford base32 (upper case, no I L O U): 10 for the
milliseconds since the epoch (50 bits) and 4 for a 20-bit sequence: the process's slot (6
bits: the worker's index with `[server] workers`, else 0) and a 14-bit count that starts at a
random value each millisecond. Within one process ids are strictly increasing even when the
wall clock steps back (the last millisecond is reused and the count goes up), so sorting ids
sorts messages by arrival; the slot keeps the ids of two workers apart even within one
millisecond (a shared id would fail a queue commit, or give two direct Maildir copies one name).
On the shared PostgreSQL queue the slot is claimed in the database instead (every process of
every node a slot of its own: queue/postgres_listen.py), so nodes never make the same id.
"""

from __future__ import annotations

from typing import Protocol

from hato.model import Clock

# Crockford's alphabet is in ascending ASCII order, so string order is numeric order.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_CHARS = 10
_SEQ_CHARS = 4
_SEQ_BITS = 5 * _SEQ_CHARS
_SLOT_BITS = 6
MAX_SLOTS = 1 << _SLOT_BITS  # processes making ids at once ([server] workers is at most 64)
_COUNT_BITS = _SEQ_BITS - _SLOT_BITS
_COUNT_MAX = (1 << _COUNT_BITS) - 1
ID_LENGTH = _TIME_CHARS + _SEQ_CHARS


class Rng(Protocol):
    """The part of `random.Random` the queue uses; `random.SystemRandom()` in production."""

    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


# Every 10-bit value as its two characters: an id is 7 lookups, not 14 steps of a loop (one id
# per message, and per copy).
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode(value: int, width: int) -> str:
    """The low 5 * `width` bits of `value`, most significant first (`_make` inlines it)."""
    chars = []
    for _ in range(width):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _make(ms: int, seq: int) -> str:
    """`_encode(ms, 10) + _encode(seq, 4)`, two characters (10 bits) a step."""
    p = _PAIRS
    return (
        p[(ms >> 40) & 1023] + p[(ms >> 30) & 1023] + p[(ms >> 20) & 1023]
        + p[(ms >> 10) & 1023] + p[ms & 1023] + p[(seq >> 10) & 1023] + p[seq & 1023]
    )  # fmt: skip


def is_queue_id(text: str) -> bool:
    """Whether `text` has the shape of a queue id (used to tell our files from strangers)."""
    return len(text) == ID_LENGTH and all(ch in _ALPHABET for ch in text)


class QueueIdGenerator:
    """Makes queue ids from a clock and a random source (both injected for tests)."""

    __slots__ = ("_clock", "_last_ms", "_rng", "_seq", "_slot")

    def __init__(self, clock: Clock, rng: Rng, slot: int = 0) -> None:
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"an id slot is 0..{MAX_SLOTS - 1}, not {slot}")
        self._clock = clock
        self._rng = rng
        self._slot = slot << _COUNT_BITS
        self._last_ms = -1
        self._seq = 0

    @property
    def slot(self) -> int:
        return self._slot >> _COUNT_BITS

    @slot.setter
    def slot(self, slot: int) -> None:
        """Another slot from now on (a node of the PostgreSQL queue claimed a free one)."""
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"an id slot is 0..{MAX_SLOTS - 1}, not {slot}")
        self._slot = slot << _COUNT_BITS

    def next(self) -> str:
        ms = int(self._clock.now() * 1000)
        if ms > self._last_ms:
            self._last_ms = ms
            # Start in the lower half of the count so a burst within one ms rarely overflows.
            self._seq = self._rng.getrandbits(_COUNT_BITS - 1)
        else:
            self._seq += 1
            if self._seq > _COUNT_MAX:
                self._last_ms += 1
                self._seq = self._rng.getrandbits(_COUNT_BITS - 1)
        return _make(self._last_ms, self._slot | self._seq)
