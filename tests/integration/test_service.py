"""Service life (issue 7): systemd notifications, the Prometheus endpoint, and running as an
unprivileged user after binding."""

from __future__ import annotations

import os
import pwd
import re
import signal
import smtplib
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.net import free_port
from peers.server import DomainSetup, MailSetup

SETUP = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))


class ServiceHato(HatoServer):
    def __init__(self, data_dir: Path, extra: str = "", env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, SETUP)
        self.extra = extra
        self.extra_env = env or {}

    def _config_text(self) -> str:
        text = super()._config_text()
        server_keys, _, rest = self.extra.partition("@@")
        return text.replace("[server]\n", "[server]\n" + server_keys, 1) + rest

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.extra_env}


def _send(server: HatoServer, marker: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        body = f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhi\r\n".encode()
        smtp.sendmail("a@example.net", ["u@example.org"], body)


def _datagrams(sock: socket.socket, want: str, timeout: float = 10) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(want in g for g in got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {want!r} from the server; got {got}") from None
    return got


def test_systemd_is_told_ready_reloading_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    server = ServiceHato(tmp_path / "data", env={"NOTIFY_SOCKET": str(path)})
    server.start()
    try:
        assert any("READY=1" in g for g in _datagrams(sock, "READY=1"))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        reload = _datagrams(sock, "READY=1")
        assert "RELOADING=1" in reload[0] and "MONOTONIC_USEC=" in reload[0]
        server.proc.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in g for g in _datagrams(sock, "STOPPING=1"))
    finally:
        server.stop()
        sock.close()


def test_prometheus_endpoint_counts_what_happened(tmp_path: Path) -> None:
    port = free_port()
    server = ServiceHato(tmp_path / "data", extra=f'@@\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    server.start()
    try:
        _send(server, "metrics-1")
        maildir.wait_for_marker(server.mailbox("u", "example.org"), "metrics-1")
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                text = page.read().decode()
            if 'hato_deliveries_total{result="delivered",transport="local"} 1.0' in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert 'hato_messages_received_total{result="accepted",role="mx"} 1.0' in text
        # The harness's own readiness probe is a connection too.
        connections = re.search(r'^hato_connections_total\{role="mx"\} (\S+)$', text, re.M)
        assert connections is not None and float(connections.group(1)) >= 1
        assert re.search(r"^hato_queue_refresh_failures_total 0\.0$", text, re.M), text
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_runs_as_the_configured_user_after_binding(workdir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    data = workdir / "data"  # every parent of workdir is open to other users
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    server = ServiceHato(data, extra='user = "nobody"\n')
    server.start()
    try:
        assert server.proc is not None
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert {int(u) for u in uids} == {nobody.pw_uid}  # real, effective, saved, fs
        _send(server, "nobody-1")
        (found,) = maildir.wait_for_marker(server.mailbox("u", "example.org"), "nobody-1")
        assert found.stat().st_uid == nobody.pw_uid
    finally:
        server.stop()
