"""Port 465 (RFC 8314 implicit TLS) under a handshake flood: connections count against the
per-IP limit from accept, before and during the TLS handshake, and a handshake has a time
limit (issue 12, item 8: 600 connections from one address sat in the handshake, unlimited)."""

from __future__ import annotations

import socket
from pathlib import Path

from peers.hato import HatoServer
from peers.net import RawSession, closed_by_server
from peers.server import submission_setup
from peers.tls import TestCA

ATTACKER = "127.0.0.3"  # an address of its own: the harness's start-up probe is 127.0.0.1's


class HandshakeHato(HatoServer):
    """Port 465 with at most 3 connections per client IP and a 6 s handshake limit: longer
    than the test takes, on a loaded machine, to open its connections and to complete the
    other client's handshake (each would be cut, and the test fail, past the limit)."""

    def _config_text(self) -> str:
        text = super()._config_text()
        listener = f'address = "{self.host}:{self.submissions_port}"'
        text = text.replace(listener, f"{listener}\nmax_connections_per_ip = 3")
        return text.replace("[limits]\n", "[limits]\ntls_handshake_timeout = 6\n", 1)


def _connect(server: HatoServer) -> socket.socket:
    return socket.create_connection(
        (server.host, server.submissions_port), source_address=(ATTACKER, 0)
    )


def test_connections_in_the_handshake_count_and_time_out(tmp_path: Path, test_ca: TestCA) -> None:
    server = HandshakeHato(tmp_path / "data", submission_setup(test_ca.tls_files()))
    server.start()
    try:
        # Three connections that never send a ClientHello fill the attacker's share.
        held = [_connect(server) for _ in range(3)]
        extra = _connect(server)
        # Refused at once, before any TLS, and without a plaintext reply on port 465.
        assert closed_by_server(extra), server.log_text()
        refused = server.wait_for_log(
            rf"event=connection-refused listener=submissions\S* client={ATTACKER} "
            r"reason=connection-limit"
        )
        assert refused, server.log_text()
        # Another address still gets in while the attacker is at its limit.
        other = RawSession(
            server.host, server.submissions_port, tls=test_ca.client_context(), source="127.0.0.2"
        )
        assert other.reply()[0] == 220
        other.close()
        # The silent ones are dropped when the handshake time (6 s) is up ...
        for sock in held:
            assert closed_by_server(sock), server.log_text()
        timed_out = server.wait_for_log(rf"(?s)(event=tls-failed \S+ client={ATTACKER} .*){{3}}")
        assert timed_out, server.log_text()
        # ... which frees the address's share for a real client.
        with RawSession(
            server.host, server.submissions_port, tls=test_ca.client_context(), source=ATTACKER
        ) as session:
            assert session.reply()[0] == 220
            assert session.command(b"EHLO client.test")[0] == 250
    finally:
        server.stop()
