"""Answers of the shared PostgreSQL store kept until another node says they changed (issue 16).

Every RCPT asks whether the mailbox is an account, every delivery asks again, and every
message asks whether its recipient has a key: on PostgreSQL each is a round trip on the event
loop, which every session then waits for (a plain local part of an `accept_any` domain is not
asked at all: directory/resolver.py). SQLite's answers are kept until its file changes
(boot/dbcache.py); the shared store has no file to watch, so a change is told instead: every
statement that changes `users`, `keys` or `key_policies`, by whichever writer (hato user, hato
key, the WKD upload, hato store copy, psql), fires a trigger that says `NOTIFY hato_directory`
(pgstore/schema.py, migration 5), which PostgreSQL delivers at COMMIT, and each node LISTENs on
its queue listener's connection (queue/postgres_listen.py) and forgets everything it kept when a
notification arrives.

What may be kept, and why. A notification arrives a moment after the commit (milliseconds; more
when this node's event loop is busy, or until TCP keepalives notice a connection that vanished
without a word). In that moment a kept answer is stale, so only answers that are harmless when
stale are kept:

- `exists` only when True. A stale True accepts a message for an account removed a moment ago,
  as if it had come a moment earlier. A stale False would answer 550 (permanent) to mail for an
  account just added: never kept, an unknown mailbox is asked every time (as before).
- A user's key only when there is one. A stale key encrypts to the key replaced a moment ago:
  never plaintext. A stale "no key" would store in the clear a message for a user who has just
  uploaded a key, breaking the promise that not even the admin can read it: not kept, but for
  the SMTP session's RCPT (crypto/keystore_pg.py KeptKeys), whose "no" is checked again in
  the queue's commit transaction before anything is stored (intake/message.py). Key
  policies (what to do when the key cannot be used) are not kept: a stale "plaintext" would
  store in the clear too.

A look-up in flight when a notification arrives is not kept (a generation counter, bumped by
every notification, must be the same before the read and after it): the read may have seen
the database before the change. While the listening connection is down or (re)connecting,
nothing is kept and nothing is answered from memory (`listening(False)`); once LISTEN is in
effect again everything is forgotten, since notifications sent meanwhile were lost.

Must not import anything of hato.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

V = TypeVar("V")

CHANNEL = "hato_directory"
MAX_ENTRIES = 16384  # past this the answers are dropped and gathered again


class NotifiedCache:
    """Answers kept while LISTEN is in effect, until a notification; safe from any thread
    (look-ups run on the event loop and in threads; notifications come on the event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live = False  # LISTEN in effect: answers may be kept and served
        self._generation = 0
        self._values: dict[Hashable, object] = {}
        self.hits = 0  # answered from memory (tests and benchmarks read it)

    # -- queue/postgres_listen.Subscriber ------------------------------------------------------

    def on_note(self, payload: str) -> None:
        """Another (or this) node committed a change to a table `payload`: forget all."""
        self._forget(live=None)

    def on_state(self, listening: bool) -> None:
        """LISTEN took effect (True: keep from now on) or the connection was lost (False)."""
        self._forget(live=listening)

    def _forget(self, *, live: bool | None) -> None:
        with self._lock:
            self._generation += 1
            self._values.clear()
            if live is not None:
                self._live = live

    # -- look-ups ------------------------------------------------------------------------------

    def get(self, key: Hashable, lookup: Callable[[], V], keep: Callable[[V], bool]) -> V:
        """The kept answer for `key`, else `lookup()`'s, kept if `keep(answer)` and nothing
        changed while it was read."""
        with self._lock:
            live, generation = self._live, self._generation
            if live and key in self._values:
                self.hits += 1
                return self._values[key]  # type: ignore[return-value]  # stored as V below
        value = lookup()
        if live and keep(value):
            with self._lock:
                if self._live and self._generation == generation:
                    if len(self._values) >= MAX_ENTRIES:
                        self._values.clear()
                    self._values[key] = value
        return value
