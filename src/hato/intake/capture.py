"""The message as the checks after DATA need it: whole, or for a large one its header section
and the body hashes its DKIM signatures need.

Theory of operation. Up to MAX_CHECKED_SIZE the message is kept in memory, as it was received,
for dkimpy (DKIM, ARC), the DKIM signer and the ARC sealer. Past it, mail we sign is not
signed (said in the log, as before), but mail we check on mx is still checked: its header
section (at most 256 KiB, a longer one is refused 552 5.3.4 by `HeaderCapture`) is kept, and
from then on the body only streams through `SignatureBodies`, in the authcheck worker threads
(`Lane`), never whole in memory and never on the event loop. SPF and DMARC need no body, so a
message of any size gets them, and the DMARC policy is applied to it as to a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.authcheck.bodyhash import SignatureBodies
from hato.authcheck.offload import Lane, Offload

MAX_CHECKED_SIZE = 10 * 1024 * 1024  # checked whole (and signed) up to this size


@dataclass(frozen=True, slots=True)
class LargeMessage:
    """A message past MAX_CHECKED_SIZE: its header section and its body's DKIM hashes."""

    header: bytes  # the header section with the empty line that ends it
    bodies: SignatureBodies
    lane: Lane

    async def digests(self) -> dict[int, bytes]:
        await self.lane.finish()
        return self.bodies.digests()


class MessageCapture:
    """Fed every chunk of DATA; `result()` at its end. `offload` None: whole or nothing."""

    def __init__(self, offload: Offload | None, limit: int = MAX_CHECKED_SIZE) -> None:
        self._offload = offload
        self._limit = limit
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._large: LargeMessage | None = None

    def feed(self, data: bytes) -> None:
        if self._large is not None:
            self._large.lane.feed(data)
            return
        if self._chunks is None:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit:
            self._go_large()

    def _go_large(self) -> None:
        whole = b"".join(self._chunks or ())
        self._chunks = None
        end = whole.find(b"\r\n\r\n")
        if self._offload is None or end < 0:
            return  # nothing more to keep: the caller says so in the log
        header = whole[: end + 4]
        bodies = SignatureBodies(header)
        lane = Lane(bodies.update, self._offload)
        self._large = LargeMessage(header, bodies, lane)
        if bodies:
            lane.feed(memoryview(whole)[end + 4 :])  # copied once, into the lane's batch
        else:
            self._large.lane.abandon()  # no signature to hash the body for

    def result(self) -> bytes | LargeMessage | None:
        if self._large is not None:
            return self._large
        return None if self._chunks is None else b"".join(self._chunks)

    def abandon(self) -> None:
        if self._large is not None:
            self._large.lane.abandon()
        self._chunks = None
