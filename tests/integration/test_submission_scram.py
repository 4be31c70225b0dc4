"""SCRAM-SHA-256 (RFC 5802 §5, RFC 7677) on the real server, as a prober sees it: the
server-first message must not tell an account from a name that is not one."""

from __future__ import annotations

import base64
import stat

import pytest
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import AuthSetup, MakeServer, submission_setup
from peers.tls import TestCA


def _server_first(server: HatoServer, ca: TestCA, user: str) -> dict[str, str]:
    """Start an exchange for `user`, read the server-first message, cancel."""
    with RawSession(server.host, server.submissions_port, tls=ca.client_context()) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO prober.test")[0] == 250
        first = base64.b64encode(f"n,,n={user},r=probe".encode())
        code, lines = session.command(b"AUTH SCRAM-SHA-256 " + first)
        assert code == 334, lines
        message = base64.b64decode(lines[-1][4:]).decode()
        assert session.command(b"*")[0] == 501
    return dict(part.split("=", 1) for part in message.split(","))


def test_an_unknown_name_gets_a_stable_salt_and_the_accounts_count(
    make_server: MakeServer, test_ca: TestCA
) -> None:
    """Before: an account always showed the same salt, an unknown name a fresh random one at
    every try (and 4096 rounds): two exchanges told which accounts exist."""
    server = make_server(
        submission_setup(test_ca.tls_files(), AuthSetup(failure_delay=0.0, max_failures=100))
    )
    if not isinstance(server, HatoServer):
        pytest.skip("about Hato's own SCRAM")
    account = [_server_first(server, test_ca, "alice@users.test") for _ in range(2)]
    unknown = [_server_first(server, test_ca, "nobody@users.test") for _ in range(2)]
    other = _server_first(server, test_ca, "somebody@users.test")
    assert account[0]["s"] == account[1]["s"]
    assert unknown[0]["s"] == unknown[1]["s"], unknown
    assert other["s"] != unknown[0]["s"]
    assert len(base64.b64decode(unknown[0]["s"])) == len(base64.b64decode(account[0]["s"])) == 16
    # New accounts get [auth] scram_iterations (default 65536, the most Cyrus SASL clients take);
    # names that are not accounts too.
    assert account[0]["i"] == unknown[0]["i"] == "65536", (account, unknown)

    # The salt comes from the server's secret in the data directory: the same after a restart.
    secret = server.data_dir / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    server.stop()
    server.start()
    assert _server_first(server, test_ca, "nobody@users.test")["s"] == unknown[0]["s"]
