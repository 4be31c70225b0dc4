"""Connections spread over the workers (issue 15 item 2): each worker accepts on the listening
sockets it shares with the others by its own accept loop, and lets a connection go to a less
loaded worker when it has more than its share.

Theory of operation. With `[server] workers` every worker waits on the same listening sockets,
and the kernel wakes them all for a new connection; the one that runs first used to accept the
whole backlog (the event loop's accept drains it), so a client that opened ten connections at
once often had nine on one worker: that worker's event loop was busy while the other idled
(`engine long 10` in docs/performance.md). Now every worker publishes its number of live
connections (sessions, TLS handshakes on port 465, connections accepted and not yet sessions)
on a `LoadBoard`: one 32-bit count per worker in an anonymous shared mapping that the
supervisor makes before it forks, so every worker inherits it. Before each accept a worker
asks its `Turn`: with more live connections than the least loaded other worker plus one, it
stops reading that socket for `HOLD` (2 ms) so that a less loaded worker, woken by the same
connection, takes it. When the pause ends, one poll of the socket tells whether the
connection is still there (if not, another worker took it: the next turn starts afresh); if it
is, this worker pauses again while a less loaded worker is runnable (woken, waiting for a
CPU on a busy machine: its state in /proc/PID/stat, the pids being on the board too), up to
`PATIENCE` (50 ms); otherwise (no other worker took it: one stopped, stuck, asleep) it
accepts it and leaves the next one to the others again; when that happens twice in a row, it
accepts all that waits on that socket (until it finds the backlog empty, for `FREE`, 0.1 s,
at most) before it judges again. So a worker that does not take its turn delays a burst by two
pauses (2 ms if stopped, up to 50 ms if stuck runnable), never strands a connection, and no
connection is ever refused here (the limits and their 421 replies stay where they are:
server/context.py, the session).

Each count has one writer, its worker (a 4-octet aligned store, seen whole by the readers);
a count read a moment stale only moves one connection to a worker that could have done
without it. The supervisor zeroes the count and pid of a worker it reaps, before its
replacement starts. Cost per connection: two stores and one read of the board (no system
call), and the accept done here in place of the event loop's own in C (`connect_accepted_socket`
driven by hand, a few more system calls): ~35-45 µs of CPU more per connection on the 2-CPU
build machine when it made a socket object and a task per connection (docs/performance.md,
"Connections spread over the workers"), 2-4 % of a message at a connection per message; on
uvloop neither is made now (`Descriptor`, `PlainAccepts`). With one worker
there is no board: the plain listeners are the event loop's `create_server`, as before, and
port 465's loop accepts whatever comes.

May import hato.model only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mmap
import os
import select
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from hato.model import logfmt

log = logging.getLogger("hato.smtpd")

HOLD = 0.002  # how long a worker past its share leaves a connection to the others
PATIENCE = 0.05  # how long at most, while a less loaded worker is runnable (waits for a CPU)
FREE = 0.1  # how long it accepts without judging once the others let two connections wait
RETRY = 0.1  # after a failed accept (EMFILE and the like): the backlog waits meanwhile
BURST = 64  # accepts per wake-up at most when accepting freely: the sessions get their turn


class LoadBoard:
    """Every worker's number of live connections, in memory shared by the processes forked
    after it was made (an anonymous MAP_SHARED mapping: no file, nothing left behind)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a board for {workers} workers")
        self.workers = workers
        self._map = mmap.mmap(-1, 8 * workers, flags=mmap.MAP_SHARED)
        whole = memoryview(self._map)
        self.counts = whole[: 4 * workers].cast("i")  # aligned native ints, one per worker
        self.pids = whole[4 * workers :].cast("i")  # each worker's process (0: none yet)

    def clear(self, worker: int) -> None:
        """A worker is gone: its connections went with it."""
        self.counts[worker] = 0
        self.pids[worker] = 0


class WorkerLoad:
    """This worker's count on the board: `add` is called as connections open and close."""

    __slots__ = ("_counts", "_index", "_others", "_pids", "count")

    def __init__(self, board: LoadBoard, index: int) -> None:
        if not 0 <= index < board.workers:
            raise ValueError(f"worker {index} of a board for {board.workers}")
        self._counts = board.counts
        self._pids = board.pids
        self._index = index
        self._others = [n for n in range(board.workers) if n != index]
        self.count = 0
        self._counts[index] = 0
        self._pids[index] = os.getpid()

    def add(self, step: int) -> None:
        self.count += step
        self._counts[self._index] = self.count

    def over_share(self) -> bool:
        """More live connections here than the least loaded other worker's plus one."""
        counts = self._counts
        return self.count > min(counts[n] for n in self._others) + 1

    def other_runnable(self) -> bool:
        """Whether a less loaded worker is running or waiting for a CPU (its state in
        /proc/PID/stat is R): woken by the connection, it will take it. Not when it is stopped
        (T), stuck in the kernel (D), or back asleep (S: it judged it was not its turn), nor
        when its state cannot be read. Asked only when a pause ends in vain."""
        for n in self._others:
            pid = self._pids[n]
            if pid and self._counts[n] < self.count - 1 and _state(pid) == "R":
                return True
        return False


def _state(pid: int) -> str:
    # os.open and one read: three system calls, where open() made seven (fstat, a failing
    # TCGETS ioctl, lseek, a second read) and a file object; asked up to once a connection.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)  # the whole file: a few hundred octets
        finally:
            os.close(fd)
        return stat.rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):  # gone, not Linux, or /proc mounted with hidepid
        return "?"


class Turn:
    """Whether this worker accepts the connection waiting on one socket now (one per socket:
    each has its own backlog). `wait` answers 0 (accept) or how long to leave it to the
    others. A connection left `hold` seconds and still there is this worker's, unless a less
    loaded worker is runnable (then `hold` again, up to `patience` in all); when one is taken
    so twice in a row, the others are not taking theirs (stopped, stuck) and this worker
    accepts whatever comes for `free` seconds, or until the socket is `drained`."""

    def __init__(
        self,
        load: WorkerLoad,
        clock: Callable[[], float],
        hold: float = HOLD,
        patience: float = PATIENCE,
        free: float = FREE,
    ) -> None:
        self._load = load
        self._clock = clock
        self._hold = hold
        self._patience = patience
        self._free = free
        self._since: float | None = None  # when this worker began leaving the connection
        self._late = 0  # connections left `hold` to the others in vain, in a row
        self._free_until = 0.0  # twice in vain: accept without judging until then

    def wait(self) -> float:
        if self._free_until and self._clock() < self._free_until:
            return 0.0
        if not self._load.over_share():
            self._since, self._late = None, 0
            return 0.0
        now = self._clock()
        if self._since is None:
            self._since = now
        left = self._since + self._hold - now
        if left > 0:
            return left
        if now - self._since < self._patience and self._load.other_runnable():
            return self._hold  # on a busy machine a woken worker may wait for a CPU a while
        self._since = None  # this one is ours; the next is left to the others again
        self._late += 1
        if self._late >= 2:
            self._late, self._free_until = 0, now + self._free
        return 0.0

    @property
    def free(self) -> bool:
        """Accepting without judging (the others let two connections wait)."""
        return bool(self._free_until) and self._clock() < self._free_until

    def drained(self) -> None:
        """Nothing is waiting on the socket: the next connection is judged afresh."""
        self._since, self._late, self._free_until = None, 0, 0.0


class Accepted(socket.socket):
    """An accepted connection's socket whose `family` and `type` read as the C socket's plain
    integers: socket.socket's own properties make an enum of them at every read, and a
    connection had them read five times (twice by `socket.accept`, three times by uvloop's
    `connect_accepted_socket`): ~5 µs a connection (issue 15). A subclass of socket.socket
    still, so uvloop detaches it when the transport closes the descriptor. Made on asyncio's
    own event loop, which reads and writes through the socket object; on uvloop's, a
    `Descriptor` is enough."""

    __slots__ = ()
    family = socket.SocketType.family  # type: ignore[assignment]
    type = socket.SocketType.type  # type: ignore[assignment]

    def discard(self) -> None:
        """Close it, unless a transport took it (then it is detached: this does nothing)."""
        self.close()


class Descriptor:
    """An accepted connection's descriptor as uvloop's `connect_accepted_socket` takes it (its
    `family`, `type` and `fileno()`), without a socket object: making one is a getsockname(2)
    (CPython checks the descriptor is a socket), socket.py's `__init__` in Python, and a
    `detach()` when the transport closes (issue 15: one system call and ~3 % of a connection's
    instructions, the fourth of its getsockname and getpeername calls). uvloop reads and writes
    the descriptor itself and calls `close()` on an attached object that is not a socket.socket
    once its transport has closed the descriptor: so `close()` only forgets the number (closing
    it again could close another connection's descriptor that took the number meanwhile), and
    `discard()` closes it while no transport has taken it."""

    __slots__ = ("family", "fd", "type")

    def __init__(self, fd: int, family: int, kind: int) -> None:
        self.fd = fd
        self.family = family
        self.type = kind

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """uvloop's transport closed the descriptor: it is no longer this object's."""
        self.fd = -1

    def discard(self) -> None:
        """Close the descriptor if no transport took it (none was made, or it failed before)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


Connection = Accepted | Descriptor  # what the accept loop hands over


class AcceptLoop:
    """Accepts on a bound, listening, non-blocking socket one connection at a time, asking
    `turn` first (None: one worker, accept whatever comes), and hands each to `accepted`."""

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        accepted: Callable[[Connection, Any], None],
        turn: Turn | None,
    ) -> None:
        self._sock = sock
        # What every accepted socket is made with (`socket.accept` reads them per connection).
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        # `socket.accept()` is this C method and a socket made with those values read anew.
        self._raw_accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        self._name = name
        self._accepted = accepted
        self._turn = turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bare = False  # uvloop's loop: a `Descriptor` in place of a socket object
        self._timer: asyncio.TimerHandle | None = None
        self._backlog = select.poll()  # whether a connection waits, when a pause ends
        self._backlog.register(sock, select.POLLIN)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._bare = type(self._loop).__module__.partition(".")[0] == "uvloop"
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop accepting (what was accepted goes on)."""
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._loop = None

    def _readable(self) -> None:
        """One connection per wake-up: the readiness is level-triggered, so the loop calls
        again while more wait, each judged with the counts the last one changed (and no
        accept(2) is spent finding the backlog empty). Once the others let two connections
        wait (`Turn.free`), everything waiting, until the backlog is found empty."""
        turn = self._turn
        for _ in range(BURST):
            if turn is not None and (left := turn.wait()) > 0:
                self._pause(left)
                return
            try:
                fd, peer = self._raw_accept()
            except (BlockingIOError, InterruptedError):
                if turn is not None:
                    turn.drained()  # another worker took it, or none is left
                return
            except OSError as exc:  # EMFILE and the like: the backlog waits meanwhile
                log.warning(logfmt("accept-failed", listener=self._name, error=exc))
                self._pause(RETRY)
                return
            if self._bare:
                self._accepted(Descriptor(fd, self._kind[0], self._kind[1]), peer)
            else:
                self._accepted(Accepted(*self._kind, fileno=fd), peer)
            if turn is None or not turn.free:
                return

    def _pause(self, delay: float) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._timer = self._loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        self._loop.add_reader(self._sock.fileno(), self._readable)
        if self._backlog.poll(0):
            self._readable()  # at once: still there, it is judged again
        elif self._turn is not None:
            # Another worker took it (the usual end of a pause): the turn starts afresh,
            # without asking the board or /proc, nor an accept(2) that finds nothing.
            self._turn.drained()


class PlainAccepts:
    """What the accept loop of a plain listener (25, 587) does with a connection: the event
    loop makes its transport and session (`connect_accepted_socket`), counted on the board
    meanwhile (the session counts itself from `connection_made`, server/context.py)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], load: WorkerLoad) -> None:
        self._factory = factory
        self._load = load
        # Made in the loop that accepts; asked once (in CPython 3.11 each
        # `get_running_loop()` is a getpid(2): two a connection).
        self._loop = asyncio.get_running_loop()

    def __call__(self, conn: Connection, _peer: Any) -> None:
        self._load.add(1)
        self._step(self._loop.connect_accepted_socket(self._factory, conn), conn)  # type: ignore[arg-type]

    def _step(self, opening: Coroutine[Any, Any, Any], conn: Connection, _: object = None) -> None:
        """Drive `connect_accepted_socket` by hand, as a task would, without one: its first
        step makes the transport and the session, then it waits for `connection_made` (a
        future it yields), and its second step returns."""
        try:
            waiter = opening.send(None)
        except BaseException as exc:
            self._load.add(-1)
            if isinstance(exc, StopIteration):  # served: the session counts itself
                return
            if isinstance(exc, OSError):  # reset before its transport was made
                conn.discard()
                return
            raise  # to the loop's exception handler, as a task's would be logged
        if waiter is None:  # a bare yield: its next step in the next turn
            self._loop.call_soon(self._step, opening, conn)
        else:
            waiter.add_done_callback(functools.partial(self._step, opening, conn))
