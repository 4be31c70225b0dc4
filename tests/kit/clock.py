"""The one fake clock of the tests (hato.model.seams.Clock): time moves only when the test moves it.

clock = FakeClock()                 # wall T0, monotonic 1000.0, both frozen
clock = FakeClock(NOW, NOW)         # a test that reads both as one time line
clock.advance(61)                   # both move on together
FakeClock(tick=0.001)               # monotonic() moves on by `tick` at every read, for code
                                    # that needs two reads to differ (file names, ordering)
"""

from __future__ import annotations

from hato.model.seams import Clock

T0 = 1_800_000_000.0  # a fixed wall-clock start (2027-01-15T08:00:00Z)


class FakeClock:
    def __init__(self, wall: float = T0, mono: float = 1000.0, *, tick: float = 0.0) -> None:
        self.wall = wall
        self.mono = mono
        self.tick = tick

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        self.mono += self.tick
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _implements_the_seam(clock: FakeClock) -> Clock:
    return clock  # mypy checks here that FakeClock is a Clock
