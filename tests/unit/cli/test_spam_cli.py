"""`hato spam learn`: what a user sees when rspamd cannot be reached or a file is missing (the
path that reaches a real rspamd is tests/integration/test_rspamd.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from peers.net import refused_port

from hato.cli import main
from hato.cli import spam as spam_cli
from kit.config import CLI, command_workdir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "spam.eml").write_bytes(b"Subject: x\r\n\r\nbuy\r\n")
    return command_workdir(tmp_path, monkeypatch)


def test_rspamd_down_is_exit_1_and_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        assert main(["spam", "learn", "spam", "spam.eml", "--controller", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hato: spam.eml: rspamd did not learn it: "), err


def test_a_missing_file_or_a_bad_controller_url_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["spam", "learn", "ham", "nothing.eml"]) == 1
    assert capsys.readouterr().err == "hato: nothing.eml: no such file\n"
    assert main(["spam", "learn", "ham", "spam.eml", "--controller", "https://x:1"]) == 1
    assert capsys.readouterr().err.startswith("hato: --controller: ")
    assert main(["spam", "learn", "maybe", "spam.eml"]) == 2  # usage


def test_check_config_names_the_rspamd_check(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = workdir / "hato.toml"
    config.write_text(CLI + '\n[rspamd]\nroles = ["mx", "submission"]\n')
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "  rspamd:    http://127.0.0.1:11333 for mx, submission (unreachable: tempfail)\n" in out


class _Controller(ThreadingHTTPServer):
    """A controller that answers each learn with the next of `replies` (status, JSON)."""

    def __init__(self, replies: list[tuple[int, dict[str, object]]]) -> None:
        self.replies = replies
        self.bodies: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _ControllerHandler)


class _ControllerHandler(BaseHTTPRequestHandler):
    server: _Controller

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        status, reply = self.server.replies.pop(0)
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def controller() -> Iterator[Callable[[list[tuple[int, dict[str, object]]]], _Controller]]:
    servers: list[_Controller] = []

    def start(replies: list[tuple[int, dict[str, object]]]) -> _Controller:
        server = _Controller(replies)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


LOCKED: tuple[int, dict[str, object]] = (
    500,
    {"error": "cannot commit checkpoint: database is locked"},
)


def test_a_busy_controller_is_asked_again_and_a_refusal_is_not(
    workdir: Path,
    controller: Callable[[list[tuple[int, dict[str, object]]]], _Controller],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(spam_cli, "RETRY_PAUSES", (0.0, 0.0, 0.0))
    # rspamd's SQLite statfile busy with a scan (CI saw this): the same message, posted again.
    busy = controller([LOCKED, LOCKED, (200, {"success": True})])
    url = f"http://127.0.0.1:{busy.server_address[1]}"
    assert main(["spam", "learn", "spam", "spam.eml", "--controller", url]) == 0
    assert capsys.readouterr().out == "spam.eml: learned as spam\n"
    assert busy.bodies == [b"Subject: x\r\n\r\nbuy\r\n"] * 3
    # Busy every time: four posts, then one line and exit 1.
    stuck = controller([LOCKED] * 4)
    url = f"http://127.0.0.1:{stuck.server_address[1]}"
    assert main(["spam", "learn", "spam", "spam.eml", "--controller", url]) == 1
    assert len(stuck.bodies) == 4 and not stuck.replies
    assert capsys.readouterr().err == (
        "hato: spam.eml: rspamd refused: cannot commit checkpoint: database is locked\n"
    )
    # A 4xx refusal is final: posted once.
    refused = controller([(400, {"error": "<x> has been already learned as spam, ignore it"})])
    url = f"http://127.0.0.1:{refused.server_address[1]}"
    assert main(["spam", "learn", "spam", "spam.eml", "--controller", url]) == 0
    assert len(refused.bodies) == 1
    assert capsys.readouterr().out == "spam.eml: already learned as spam\n"
