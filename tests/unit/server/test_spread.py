"""Connections spread over the workers (server/spread.py): the board every worker reads, the
rule that leaves a connection to a less loaded worker for a bounded time, on a fake clock, and
the accept loop on a real loopback socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any, cast

import pytest

from hato.server.context import ListenerState
from hato.server.spread import (
    FREE,
    HOLD,
    PATIENCE,
    AcceptLoop,
    Connection,
    Descriptor,
    LoadBoard,
    PlainAccepts,
    Turn,
    WorkerLoad,
)
from kit.clock import FakeClock


def _loads(workers: int = 2) -> tuple[LoadBoard, list[WorkerLoad]]:
    """Workers' counts, all kept by this process: no pid on the board (no process to ask
    whether it is runnable) but where a test puts one."""
    board = LoadBoard(workers)
    loads = [WorkerLoad(board, n) for n in range(workers)]
    for n in range(workers):
        board.pids[n] = 0
    return board, loads


def test_each_worker_publishes_its_count_and_reads_the_others() -> None:
    board, (first, second) = _loads()
    first.add(1)
    assert list(board.counts) == [1, 0]
    assert not first.over_share()  # one more than the other: its share still
    first.add(1)
    assert first.over_share() and not second.over_share()
    second.add(1)
    assert not first.over_share()
    board.pids[0] = 123
    board.clear(0)  # the supervisor reaps worker 0
    assert list(board.counts) == [0, 1] and board.pids[0] == 0


def test_the_board_is_shared_with_a_forked_process() -> None:
    board, (first, _) = _loads()
    pid = os.fork()
    if not pid:  # the child: a worker publishing its count
        WorkerLoad(board, 1).add(5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert list(board.counts) == [0, 5]
    assert not first.over_share()


def test_a_worker_at_its_share_accepts_at_once() -> None:
    _, (first, _) = _loads()
    turn = Turn(first, FakeClock(mono=0.0).monotonic)
    for _ in range(2):
        assert turn.wait() == 0.0
        first.add(1)


def test_a_worker_past_its_share_leaves_the_connection_for_a_bounded_time() -> None:
    clock = FakeClock(mono=0.0)
    _, (first, second) = _loads()
    first.add(2)  # 2 against 0: past the other's count plus one
    turn = Turn(first, clock.monotonic)
    assert turn.wait() == pytest.approx(HOLD)
    clock.advance(HOLD / 2)
    assert turn.wait() == pytest.approx(HOLD / 2)  # the same connection: not paused anew
    second.add(2)  # the other worker took it (and another)
    assert turn.wait() == 0.0  # back to its share: the next is judged afresh
    second.add(-2)
    assert turn.wait() == pytest.approx(HOLD)


def test_a_connection_no_other_worker_takes_is_accepted_after_the_pause() -> None:
    clock = FakeClock(mono=0.0)
    _, (first, _) = _loads()
    first.add(3)
    turn = Turn(first, clock.monotonic)
    assert turn.wait() == pytest.approx(HOLD)
    clock.advance(HOLD)
    assert turn.wait() == 0.0  # still there after the pause: this worker's
    first.add(1)
    assert turn.wait() == pytest.approx(HOLD)  # the next one is left to the others again
    clock.advance(HOLD)
    assert turn.wait() == 0.0  # twice in vain: the other worker is not taking any
    assert turn.free
    for _ in range(5):
        first.add(1)
        assert turn.wait() == 0.0  # for FREE seconds
    clock.advance(FREE)
    assert turn.wait() == pytest.approx(HOLD)  # then the next is left to the others again
    clock.advance(HOLD)
    assert turn.wait() == 0.0
    turn.drained()  # the backlog found empty: another worker took one
    assert turn.wait() == pytest.approx(HOLD)


def test_a_runnable_less_loaded_worker_is_given_more_time_a_stopped_one_is_not() -> None:
    clock = FakeClock(mono=0.0)
    board, (first, _) = _loads()
    first.add(2)
    turn = Turn(first, clock.monotonic)
    board.pids[1] = os.getpid()  # running (this test): woken, it would take the connection
    assert turn.wait() == pytest.approx(HOLD)
    for _ in range(int(PATIENCE / HOLD) - 1):
        clock.advance(HOLD)
        assert turn.wait() == pytest.approx(HOLD)  # paused again: it is waiting for a CPU
    clock.advance(HOLD)
    assert turn.wait() == 0.0  # PATIENCE in all: taken
    pid = os.fork()
    if not pid:  # a worker stopped by SIGSTOP
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    try:
        assert os.WIFSTOPPED(os.waitpid(pid, os.WUNTRACED)[1])
        board.pids[1] = pid
        assert turn.wait() == pytest.approx(HOLD)
        clock.advance(HOLD)
        assert turn.wait() == 0.0  # a stopped worker takes nothing: not waited for
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_dead_workers_count_is_cleared_and_it_gets_the_next_connections() -> None:
    clock = FakeClock(mono=0.0)
    board, (first, _) = _loads()
    first.add(4)
    turn = Turn(first, clock.monotonic)
    board.counts[1] = 9  # worker 1 had many; it dies
    assert turn.wait() == 0.0
    board.clear(1)
    assert turn.wait() == pytest.approx(HOLD)  # its replacement starts with none


def test_sessions_and_handshakes_count_on_the_board() -> None:
    board, (first, _) = _loads()
    state = ListenerState("mx@127.0.0.1:25", max_connections=10, max_per_ip=5, load=first)
    session = object()
    state.reserve("192.0.2.1")  # a TLS handshake of port 465
    state.enter(session, "192.0.2.2")  # type: ignore[arg-type]
    assert list(board.counts) == [2, 0]
    state.release("192.0.2.1")
    state.leave(session, "192.0.2.2")  # type: ignore[arg-type]
    state.leave(session, "192.0.2.2")  # type: ignore[arg-type]  # twice: counted once
    assert list(board.counts) == [0, 0]


def test_the_accept_loop_leaves_then_takes_a_connection_no_other_worker_took() -> None:
    async def scenario() -> list[int]:
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        board, (first, _) = _loads()
        first.add(3)  # past its share: each connection waits HOLD before it is taken
        taken: list[int] = []
        got = asyncio.Event()

        def accepted(conn: Connection, peer: Any) -> None:
            taken.append(board.counts[0])
            first.add(1)
            conn.discard()
            got.set()

        loop = AcceptLoop(listening, "mx", accepted, Turn(first, asyncio.get_running_loop().time))
        loop.start()
        client = socket.create_connection(listening.getsockname())
        try:
            async with asyncio.timeout(10):
                await got.wait()  # the other worker (none here) did not take it
        finally:
            loop.close()
            client.close()
            listening.close()
        return taken

    assert asyncio.run(scenario()) == [3]


def test_a_pause_whose_connection_another_worker_took_ends_without_judging_again() -> None:
    """The usual end of a pause: the less loaded worker took the connection. The accept loop
    finds the backlog empty and starts the next turn afresh, instead of asking the board and
    /proc again and pausing anew while that worker is runnable (up to PATIENCE for nothing)."""

    class Counted(Turn):
        judged = 0
        event: asyncio.Event | None = None

        def wait(self) -> float:
            Counted.judged += 1
            if Counted.event is not None:
                Counted.event.set()
            return super().wait()

    async def scenario() -> tuple[int, int]:
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        board, (first, _) = _loads()
        first.add(3)  # past its share
        board.pids[1] = os.getpid()  # the other worker: runnable (this process runs)
        clock = asyncio.get_running_loop().time
        Counted.event = judged = asyncio.Event()
        loop = AcceptLoop(listening, "mx", lambda conn, peer: conn.close(), Counted(first, clock))
        loop.start()
        client = socket.create_connection(listening.getsockname())
        try:
            async with asyncio.timeout(10):
                await judged.wait()  # judged once: paused, left to the other worker
            listening.accept()[0].close()  # the other worker takes it
            await asyncio.sleep(PATIENCE / 2)  # many pauses' worth
            after = Counted.judged
            judged.clear()
            fresh = socket.create_connection(listening.getsockname())  # the next connection
            async with asyncio.timeout(10):
                await judged.wait()
            fresh.close()
        finally:
            loop.close()
            client.close()
            listening.close()
        return after, Counted.judged - after

    after, next_turn = asyncio.run(scenario())
    assert after == 1  # the pause ended on an empty backlog: not judged again
    assert next_turn >= 1  # and the next connection is judged as usual


class _Greeter(asyncio.Protocol):
    """Greets, and notes its peer and when its connection is gone."""

    def __init__(self, gone: asyncio.Event) -> None:
        self.gone = gone
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        cast(asyncio.Transport, transport).write(b"220 hi\r\n")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_accepted_connection_is_served_and_its_descriptor_closed_once(loop_kind: str) -> None:
    """The accept loop makes the connection's socket itself: on asyncio's loop an `Accepted`
    (family and type read as plain ints, no enum made per read), on uvloop's a `Descriptor` (no
    socket object at all); the event loop's transport serves it and, closing, closes the
    descriptor, and the object does not close it a second time."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")  # the `fast` extra, what the server runs on

    async def scenario() -> tuple[list[Connection], list[Any], str]:
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        _, (first, _) = _loads()
        seen: list[Connection] = []
        peers: list[Any] = []
        gone = asyncio.Event()

        def factory() -> asyncio.Protocol:
            greeter = _Greeter(gone)
            peers.append(greeter)
            return greeter

        accepts = PlainAccepts(factory, first)

        def accepted(conn: Connection, peer: Any) -> None:
            seen.append(conn)
            accepts(conn, peer)

        loop = AcceptLoop(listening, "mx", accepted, None)
        loop.start()
        before = _open_descriptors()
        reader, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        try:
            async with asyncio.timeout(10):
                greeting = await reader.readline()
                await gone.wait()
            client = writer.get_extra_info("sockname")
        finally:
            writer.close()
            loop.close()
            listening.close()
        await asyncio.sleep(0)
        assert _open_descriptors() <= before  # the client's and the server's end are closed
        return seen, [peers[0].peer, client], greeting.decode()

    runner = asyncio.run if loop_kind == "asyncio" else uvloop.run
    seen, (peer, client), greeting = runner(scenario())
    assert greeting == "220 hi\r\n"
    assert peer == client
    (conn,) = seen
    assert type(conn.family) is int and type(conn.type) is int  # no enum made per read
    assert conn.family == socket.AF_INET and conn.type == socket.SOCK_STREAM
    if loop_kind == "uvloop":
        assert isinstance(conn, Descriptor)  # no socket object made per connection
    else:
        assert isinstance(conn, socket.socket)  # asyncio's transport reads through it
    assert conn.fileno() == -1  # detached, or forgotten once the transport closed it


def test_a_descriptor_the_transport_closed_is_forgotten_not_closed_again() -> None:
    """uvloop calls `close()` on the object once its transport has closed the descriptor: by
    then the number may be another connection's, which must stay open."""
    reused, other = socket.socketpair()
    try:
        conn = Descriptor(reused.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        conn.close()
        conn.discard()
        assert conn.fileno() == -1
        os.fstat(reused.fileno())  # still open
        reused.sendall(b"x")
        assert other.recv(1) == b"x"
    finally:
        reused.close()
        other.close()


def test_a_descriptor_no_transport_took_is_closed() -> None:
    """A connection uvloop cannot make a transport of (here a pipe: not a socket) is closed by
    `PlainAccepts`, not left open; and its count on the board is given back."""
    uvloop = pytest.importorskip("uvloop")
    read_end, write_end = os.pipe()
    os.close(write_end)
    _, (first, _) = _loads()

    async def scenario() -> None:
        accepts = PlainAccepts(lambda: asyncio.Protocol(), first)
        accepts(Descriptor(read_end, socket.AF_INET, socket.SOCK_STREAM), None)

    uvloop.run(scenario())
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed
    assert first.count == 0
