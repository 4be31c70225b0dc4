"""Issue 15 item 2: with `[server] workers = 2`, connections opened at once are spread over both
workers (each accepted one used to take most of a burst), on port 25 and on port 465's own
accept loop alike, and a stopped worker strands none: the other serves them. Which worker
served a session is its id's middle part in the log (`event=connect session=STAMP.WORKER.N`),
as an admin reads it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.server import AuthSetup, submission_setup
from peers.tls import TestCA
from test_workers_limits import TwoWorkers, _both_ready

BURST = 10


def _open_at_once(server: HatoServer, port: int, count: int) -> list[socket.socket]:
    """`count` connections made before any is read: all wait in the listening socket's
    backlog together (the kernel completes a TCP handshake without the server)."""
    return [socket.create_connection((server.host, port), timeout=20) for _ in range(count)]


def _greeted(sock: socket.socket, tls: ssl.SSLContext | None) -> socket.socket:
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="hato.test")
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(512)
        assert chunk, data
        data += chunk
    assert data.startswith(b"220 "), data
    return sock


def _workers_of(server: HatoServer, socks: list[socket.socket]) -> Counter[str]:
    """How many of these connections each worker serves, by their `connect` lines."""
    ports = {s.getsockname()[1] for s in socks}
    deadline = time.monotonic() + 20
    while True:
        served = {
            int(port): worker
            for worker, port in re.findall(
                r"event=connect session=\w+\.(\d+)\.\w+ .* port=(\d+) ", server.log_text()
            )
            if int(port) in ports
        }
        if len(served) == len(ports):
            return Counter(served.values())
        assert time.monotonic() < deadline, served  # log lines are written in batches
        time.sleep(0.05)


def _pids(server: HatoServer) -> dict[str, int]:
    """Each worker's pid by its index (`event=worker-started worker=N pid=P`)."""
    found = re.findall(r"event=worker-started worker=(\d+) pid=(\d+)", server.log_text())
    return {worker: int(pid) for worker, pid in found}


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


@pytest.mark.parametrize("listener", ["mx", "submissions"])
def test_connections_opened_at_once_are_spread_over_both_workers(
    tmp_path: Path, test_ca: TestCA, listener: str
) -> None:
    server = TwoWorkers(tmp_path / "data", submission_setup(test_ca.tls_files(), AuthSetup()))
    server.start()
    held: list[socket.socket] = []
    try:
        _both_ready(server)
        port, tls = (
            (server.port, None)
            if listener == "mx"
            else (server.submissions_port, test_ca.client_context())
        )
        waiting = _open_at_once(server, port, BURST)
        held = [_greeted(sock, tls) for sock in waiting]
        served = _workers_of(server, held)
        # A worker past the other's count plus one leaves the next connection to it: 5 and
        # 5, or 6 and 4 (a count read a moment stale).
        assert sorted(served) == ["0", "1"] and min(served.values()) >= 3, served
    finally:
        _close(held)
        server.stop()


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    # kill(2) returns before the other CPU stops it: it could still accept the next connection.
    deadline = time.monotonic() + 20
    while (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.01)


def test_a_stopped_worker_strands_no_connection(tmp_path: Path, test_ca: TestCA) -> None:
    server = TwoWorkers(tmp_path / "data", submission_setup(test_ca.tls_files(), AuthSetup()))
    server.start()
    held: list[socket.socket] = []
    pids: dict[str, int] = {}
    try:
        _both_ready(server)
        pids = _pids(server)
        # Worker 0 is stopped with no connection: worker 1, past its share from its second
        # connection on, leaves each to worker 0 for a moment, then serves it itself.
        _stop(pids["0"])
        started = time.monotonic()
        held = [_greeted(sock, None) for sock in _open_at_once(server, server.port, 6)]
        assert time.monotonic() - started < 15  # bounded: nothing waits for worker 0
        assert _workers_of(server, held) == {"1": 6}
        os.kill(pids["0"], signal.SIGCONT)
        # Worker 1 holds 6, worker 0 none: the next connections are worker 0's.
        more = [_greeted(sock, None) for sock in _open_at_once(server, server.port, 4)]
        held += more
        served = _workers_of(server, more)
        assert served["0"] >= 3, served
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _close(held)
        server.stop()
