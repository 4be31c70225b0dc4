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
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from hato.model import logfmt

log = logging.getLogger("hato.queue")

CHANNEL = "hato_queue"
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


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
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._connect = connect
        self._node_id = node_id
        self._wake = wake
        self._rng = rng if rng is not None else random.Random()
        self.listening = asyncio.Event()
        self.lost = asyncio.Event()

    async def run(self) -> None:
        delay = MIN_BACKOFF
        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.lost.clear()
                    log.info(logfmt("queue-listening", channel=CHANNEL))
                    delay = MIN_BACKOFF
                    self._wake()  # what was notified while we were not listening is lost
                    async for note in conn.notifies():
                        if note.payload != self._node_id:
                            self._wake()
            except (psycopg.Error, OSError) as exc:
                wait = delay * (0.5 + self._rng.random())
                log.warning(logfmt("queue-listen-failed", error=_reason(exc), retry=round(wait, 1)))
            else:
                wait = delay  # the server closed the connection without an error
            finally:
                self.listening.clear()
                self.lost.set()
            # A backoff between reconnects, not synchronisation.
            await asyncio.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF)
