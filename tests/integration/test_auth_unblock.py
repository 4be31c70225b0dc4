"""`hato user blocked` / `hato user unblock`: an admin sees the clients blocked for failed AUTHs
and lifts a block; the client's next login succeeds at once. Running (through the server, which
logs `admin-unblock` in its own log; one process keeps the throttle in its memory) and stopped
(on DATA_DIR/authlimit.db, logged on the command's stderr)."""

from __future__ import annotations

import re
from pathlib import Path

from peers.clients import auth_plain, submissions_session
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import AuthSetup, submission_setup
from peers.tls import TestCA
from test_workers import TwoWorkers

CLIENT = "127.0.0.77"
AUTH = AuthSetup(failure_delay=0.05, max_failure_delay=0.1, max_failures=3, block_time=3600)


def _block(server: HatoServer, ca: TestCA) -> None:
    """Fail AUTH from CLIENT until it is blocked (RFC 5321 §3.8 421; RFC 3463 X.7.0)."""
    for attempt in range(AUTH.max_failures or 0):
        with submissions_session(server, ca, source=CLIENT) as session:
            code, lines = auth_plain(session, "alice@users.test", f"wrong-{attempt}")
    assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines
    # Its next connection is refused before it may try the right password.
    tls = ca.client_context()
    with RawSession(server.host, server.submissions_port, tls=tls, source=CLIENT) as session:
        code, lines = session.reply()
    assert (code, lines[-1][4:9]) == (421, b"4.7.0"), lines


def _log_in(server: HatoServer, ca: TestCA) -> int:
    with submissions_session(server, ca, source=CLIENT) as session:
        return auth_plain(session, "alice@users.test")[0]


def _listed(server: HatoServer) -> str:
    done = server.hato("user", "blocked")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_admin_unblocks_a_client_while_the_server_runs(tmp_path: Path, test_ca: TestCA) -> None:
    server = HatoServer(tmp_path / "data", submission_setup(test_ca.tls_files(), AUTH))
    server.start()
    try:
        nothing = server.hato("user", "blocked")
        assert (nothing.returncode, nothing.stdout) == (0, "")
        assert nothing.stderr.startswith("no client is blocked for failed AUTHs")
        _block(server, test_ca)
        assert re.fullmatch(
            rf"{re.escape(CLIENT)} blocked until \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n",
            _listed(server),
        )
        refused = server.hato("user", "unblock", "127.0.0.78")
        assert refused.returncode == 1
        assert "127.0.0.78 is not blocked" in refused.stderr
        bad = server.hato("user", "unblock", "not-an-ip")
        assert bad.returncode == 1 and "not-an-ip: not an IP address" in bad.stderr
        done = server.hato("user", "unblock", CLIENT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"unblocked {CLIENT}: it may authenticate again at once")
        assert _log_in(server, test_ca) == 235  # at once, on the same running server
        assert _listed(server) == ""
        # Who lifted it is in the server's log, where its block was logged.
        assert server.wait_for_log(rf"event=admin-unblock client={re.escape(CLIENT)}")
    finally:
        server.stop()


def test_an_admin_unblocks_a_client_with_the_server_stopped(
    tmp_path: Path, test_ca: TestCA
) -> None:
    """With workers the blocks are in DATA_DIR/authlimit.db, kept across a restart: lifted
    there while the server is stopped, the client logs in once it is back."""
    server = TwoWorkers(tmp_path / "data", submission_setup(test_ca.tls_files(), AUTH))
    server.start()
    try:
        _block(server, test_ca)
        assert _listed(server).startswith(f"{CLIENT} blocked until ")  # through the server
    finally:
        server.stop()
    assert _listed(server).startswith(f"{CLIENT} blocked until ")  # from the file
    done = server.hato("user", "unblock", CLIENT)
    assert done.returncode == 0, done.stderr
    assert f"event=admin-unblock client={CLIENT}" in done.stderr  # no server log to write to
    assert _listed(server) == ""
    server.start()
    try:
        assert _log_in(server, test_ca) == 235
    finally:
        server.stop()
