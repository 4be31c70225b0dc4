"""LISTEN hato_queue: wake this node's runner when another node made rows due.

Must not import anything of hato but model and this room.

Theory of operation. A node that commits mail its own runner cannot take at once (every
delivery slot busy), or an operator's release or flush on any node, says `NOTIFY hato_queue`
in the same transaction (PostgreSQL delivers it at COMMIT only, so a woken node finds the rows
committed), with the notifying node's id as payload. Each node holds one dedicated connection
(not one of the pool's: it stays in LISTEN for the process's life) and wakes its runner's due
scan for every notification but its own (it woke itself without the round trip), so new work
is taken at once by some idle node, not after the scan's poll interval.

When the connection fails (the database restarts, fails over to a promoted replica, the
network goes away), the listener connects again with a growing delay (1 s doubling to 60 s,
with jitter, so that many nodes do not reconnect in step), and wakes the runner once it is
back, since a notification sent meanwhile was lost. TCP keepalives (set by whoever makes the
connection) notice a peer that vanished without a word.

The same connection holds this process's queue id slot (queue/ids.py: 6 bits of every id): a
session-level advisory lock on (SLOT_LOCKS, slot), taken with `pg_try_advisory_lock` on the
first free slot at open, so that no two live processes of any nodes make ids in one slot (two
nodes' ids could otherwise collide within one millisecond, and the commit of the second would
fail). PostgreSQL frees the lock when the connection ends (the process died, or the database
went away); on reconnecting the listener takes its slot again, or another free one if a new
process took it meanwhile. With every slot taken (more than 64 processes on one database) the
process keeps its slot and says so: ids then stay unique only by their random part.

Other rooms may `subscribe` to another channel on the same connection (boot/pgcache.py: the
account and key cache, LISTEN hato_directory): their `on_note` gets each notification's
payload, and their `on_state(True)` is called once LISTEN is in effect (after every
(re)connect), `on_state(False)` whenever the connection is lost (and before the first connect).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import psycopg

from hato.model import logfmt
from hato.queue.ids import MAX_SLOTS

log = logging.getLogger("hato.queue")

CHANNEL = "hato_queue"
SLOT_LOCKS = 0x4861746F  # "Hato": the advisory lock class of queue id slots
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class Subscriber(Protocol):
    """Told of the notifications on one more channel, and of whether they can be heard."""

    def on_note(self, payload: str) -> None: ...

    def on_state(self, listening: bool) -> None: ...


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Listener:
    """`run()` until cancelled; `listening` is set while LISTEN is in effect, `lost` once
    the connection failed (until it listens again)."""

    def __init__(
        self,
        connect: Connect,
        node_id: str,
        wake: Callable[[], None],
        slot: Callable[[int], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        """`slot(n)`: this process makes its ids in slot n from now on."""
        self._connect = connect
        self._node_id = node_id
        self._wake = wake
        self._set_slot = slot
        self._slot: int | None = None
        self._rng = rng if rng is not None else random.Random()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.listening = asyncio.Event()
        self.lost = asyncio.Event()
        self._subscribers: dict[str, Subscriber] = {}

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """LISTEN `channel` too (from the next connect on: call before `run`)."""
        self._subscribers[channel] = subscriber
        subscriber.on_state(False)

    async def open(self, preferred: int) -> None:
        """Connect and claim an id slot (`preferred` if free) before the first id is made;
        raises psycopg's error. `run` listens on this connection."""
        self._slot = preferred
        self._conn = await self._connect()
        await self._claim(self._conn)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _claim(self, conn: psycopg.AsyncConnection[Any]) -> None:
        mine = self._slot if self._slot is not None else 0
        others = [n for n in range(MAX_SLOTS) if n != mine]
        self._rng.shuffle(others)
        for slot in (mine, *others):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (SLOT_LOCKS, slot))
            row = await cur.fetchone()
            if row is not None and row[0]:
                if slot != self._slot:
                    log.info(logfmt("queue-id-slot", slot=slot, was=self._slot))
                self._slot = slot
                self._set_slot(slot)
                return
        log.warning(logfmt("queue-id-slots-full", slot=mine, slots=MAX_SLOTS))

    async def run(self) -> None:
        delay = MIN_BACKOFF
        while True:
            try:
                conn, self._conn = self._conn, None
                claimed = conn is not None  # by `open`
                if conn is None:
                    conn = await self._connect()
                async with conn:
                    if not claimed:
                        await self._claim(conn)
                    await conn.execute(f"LISTEN {CHANNEL}")
                    for channel, subscriber in self._subscribers.items():
                        await conn.execute(f"LISTEN {channel}")
                        subscriber.on_state(True)  # what it missed meanwhile is forgotten
                    self.listening.set()
                    self.lost.clear()
                    log.info(logfmt("queue-listening", channel=CHANNEL))
                    delay = MIN_BACKOFF
                    self._wake()  # what was notified while we were not listening is lost
                    async for note in conn.notifies():
                        if note.channel != CHANNEL:
                            self._subscribers[note.channel].on_note(note.payload)
                        elif note.payload != self._node_id:
                            self._wake()
            except (psycopg.Error, OSError) as exc:
                wait = delay * (0.5 + self._rng.random())
                log.warning(logfmt("queue-listen-failed", error=_reason(exc), retry=round(wait, 1)))
            else:
                wait = delay  # the server closed the connection without an error
            finally:
                self.listening.clear()
                self.lost.set()
                for subscriber in self._subscribers.values():
                    subscriber.on_state(False)
            # A backoff between reconnects, not synchronisation.
            await asyncio.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF)
