"""Issue 15 item 1: with several worker processes (Hato's default is one per CPU) the limits
are exact: one client's `max_connections_per_ip` holds across all the workers, whichever of
them accepts, and a place comes free when a connection closes in any; AUTH failures on any
worker add up to one block, which holds on every worker."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import time
from pathlib import Path

from peers.clients import auth_plain, submissions_session
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import AuthSetup, DomainSetup, MailSetup, submission_setup
from peers.tls import TestCA
from test_workers import _children

LIMIT = 3
CLIENT = "127.0.0.77"
OTHER = "127.0.0.78"


class TwoWorkers(HatoServer):
    def _config_text(self) -> str:
        return super()._config_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)


def _open(server: HatoServer) -> tuple[RawSession, int]:
    session = RawSession(server.host, server.port, timeout=10, source=CLIENT)
    code, lines = session.reply()
    if code != 220:
        # RFC 5321 §3.8 421; RFC 3463 X.7.0: too many connections from this client.
        assert code == 421 and b"4.7.0" in lines[0], lines
    return session, code


def _greeted_within(server: HatoServer, seconds: float) -> RawSession:
    """A connection that gets its 220, once the server has counted a closed one out."""
    deadline = time.monotonic() + seconds
    while True:
        session, code = _open(server)
        if code == 220:
            return session
        session.sock.close()
        assert time.monotonic() < deadline, "no place came free"


def test_the_per_ip_limit_holds_across_two_workers(tmp_path: Path) -> None:
    setup = MailSetup(
        domains=(DomainSetup("example.org", accept_any=True),), max_connections_per_ip=LIMIT
    )
    server = TwoWorkers(tmp_path / "data", setup)
    server.start()
    assert server.proc is not None
    first, second = workers = _children(server.proc.pid)
    held: list[RawSession] = []
    try:
        # Which worker accepts is the kernel's choice; a stopped worker accepts nothing, so
        # stopping one at a time decides it (both take from the same listening socket).
        os.kill(first, signal.SIGSTOP)
        for _ in range(LIMIT - 1):
            session, code = _open(server)
            held.append(session)
            assert code == 220  # all in the second worker
        os.kill(first, signal.SIGCONT)
        os.kill(second, signal.SIGSTOP)
        session, code = _open(server)
        held.append(session)
        assert code == 220  # the first worker: LIMIT in all now
        session, code = _open(server)
        session.sock.close()
        assert code == 421  # counted per worker, the first had one only
        os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)
        session, code = _open(server)
        session.sock.close()
        assert code == 421  # nor in the second, which had LIMIT - 1
        # One closes in the second worker: its place is free, whoever accepts next.
        held.pop(0).sock.close()
        os.kill(first, signal.SIGCONT)
        held.append(_greeted_within(server, 10))
        session, code = _open(server)
        session.sock.close()
        assert code == 421
        # Workers killed with their connections: these no longer count once replaced.
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        for session in held:
            session.sock.close()
        held = [_greeted_within(server, 30) for _ in range(LIMIT)]
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        for session in held:
            session.sock.close()
        server.stop()


def _both_ready(server: HatoServer) -> None:
    deadline = time.monotonic() + 20
    while server.log_text().count("event=ready ") < 2:
        assert time.monotonic() < deadline, "a worker did not start"
        time.sleep(0.05)


def _stop(server: HatoServer, stopped: int, running: int) -> None:
    """Let `running` accept and stop `stopped`, once every connection so far has been closed
    by the server (its `disconnect` logged): a worker stopped while it held the shared files'
    lock (closing a connection, counting a failure) would hold up the other."""
    deadline = time.monotonic() + 20
    while True:
        text = server.log_text()
        if text.count("event=connect ") == text.count("event=disconnect "):
            break
        assert time.monotonic() < deadline, "connections left open"
        time.sleep(0.02)
    os.kill(running, signal.SIGCONT)
    os.kill(stopped, signal.SIGSTOP)
    # kill(2) returns before the other CPU stops it: it could still accept the next connection.
    while (Path("/proc") / str(stopped) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.01)


def test_auth_failures_on_both_workers_add_up_to_one_block(tmp_path: Path, test_ca: TestCA) -> None:
    """Every worker serves submission (issue 15 item 1): failed AUTHs one client spreads over
    connections that either worker accepted count together (DATA_DIR/authlimit.db) and reach
    the block, which refuses its next connection wherever it lands; a login works on both."""
    auth = AuthSetup(failure_delay=0.05, max_failure_delay=0.1, max_failures=4, block_time=600)
    server = TwoWorkers(tmp_path / "data", submission_setup(test_ca.tls_files(), auth))
    server.start()
    assert server.proc is not None
    first, second = workers = _children(server.proc.pid)
    ca = test_ca.client_context()
    _both_ready(server)

    def fail(attempt: int) -> tuple[int, list[bytes]]:
        with submissions_session(server, test_ca, source=CLIENT) as session:
            return auth_plain(session, "alice@users.test", f"wrong-{attempt}")

    def log_in() -> None:
        with submissions_session(server, test_ca, source=OTHER) as session:
            code, lines = auth_plain(session, "bob@users.test")
            assert code == 235, lines

    try:
        # A stopped worker accepts nothing: stopping one at a time decides which accepts.
        _stop(server, first, second)
        for attempt in range(2):
            code, lines = fail(attempt)
            assert code == 535, lines
        log_in()
        _stop(server, second, first)
        code, lines = fail(2)
        assert code == 535, lines  # the third: counted with the second worker's two
        log_in()
        _stop(server, first, second)
        code, lines = fail(3)
        # RFC 5321 §3.8 421; RFC 3463 X.7.0: the fourth failure blocks the client.
        assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
        for stopped, running in ((first, second), (second, first)):
            _stop(server, stopped, running)
            for port, tls in ((server.submission_port, None), (server.submissions_port, ca)):
                with RawSession(server.host, port, tls=tls, source=CLIENT) as s:
                    code, lines = s.reply()
                    assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
            log_in()  # other clients are not blocked
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        server.stop()


def _auth_line(server: HatoServer, ca: ssl.SSLContext) -> bytes:
    """What EHLO offers after STARTTLS on port 587 (RFC 3207 §4.2: EHLO again after TLS)."""
    with RawSession(server.host, server.submission_port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"STARTTLS")[0] == 220
        session.start_tls(ca)
        code, lines = session.command(b"EHLO client.test")
        assert code == 250, lines
        return next(line[4:] for line in lines if line[4:].startswith(b"AUTH "))


def test_a_reload_reaches_the_submission_listeners_of_every_worker(
    tmp_path: Path, test_ca: TestCA
) -> None:
    """SIGHUP is passed to every worker, and each applies a live key to its own submission
    listeners: `[auth] mechanisms` changes what EHLO offers in both. (Without stopping a
    worker: one stopped while it holds a shared lock, the queue's, holds up the other.)"""
    server = TwoWorkers(tmp_path / "data", submission_setup(test_ca.tls_files(), AuthSetup()))
    server.start()
    ca = test_ca.client_context()
    try:
        _both_ready(server)  # a SIGHUP before a worker's handler is installed would end it
        assert b"LOGIN" in _auth_line(server, ca)
        text = server.config.read_text()
        server.config.write_text(text.replace("[auth]\n", '[auth]\nmechanisms = ["PLAIN"]\n', 1))
        assert server.proc is not None
        before = server.log_text().count("event=reloaded")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while server.log_text().count("event=reloaded") < before + 2:
            assert time.monotonic() < deadline, "not both workers reloaded"
            time.sleep(0.05)
        start = len(server.log_text())
        served: set[str] = set()
        for _ in range(200):  # the kernel picks the worker: until both have answered
            assert _auth_line(server, ca) == b"AUTH PLAIN"
            served |= set(re.findall(r"event=tls session=\w+\.(\d+)\.", server.log_text()[start:]))
            if served == {"0", "1"}:
                break
        assert served == {"0", "1"}, served
    finally:
        server.stop()
