"""`hato spam learn`: what a user sees when rspamd cannot be reached or a file is missing (the
path that reaches a real rspamd is tests/integration/test_rspamd.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hato.cli import main

CONFIG = """
[server]
hostname = "mail.example.org"
data_dir = "data"

[[listener]]
role = "mx"
address = "127.0.0.1:2525"

[[domain]]
name = "example.org"
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hato.toml").write_text(CONFIG)
    (tmp_path / "spam.eml").write_bytes(b"Subject: x\r\n\r\nbuy\r\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATO_HOME", raising=False)
    return tmp_path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_rspamd_down_is_exit_1_and_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
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
    config.write_text(CONFIG + '\n[rspamd]\nroles = ["mx", "submission"]\n')
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "  rspamd:    http://127.0.0.1:11333 for mx, submission (unreachable: tempfail)\n" in out
