"""A configuration `hato serve` cannot run, as an admin writes one: one line on stderr naming the
key (or file) and the fix, the documented exit code (78, 73 for a listener that cannot be
bound: docs/operations.md "Exit codes"), never a traceback."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import pytest
from peers.hato import hato_binary
from peers.net import LOOPBACK, free_port

_BASE = """\
[server]
hostname = "mail.example.org"
data_dir = "{data}"
workers = 1

[[listener]]
role = "mx"
address = "{address}"

[[domain]]
name = "example.org"
"""


def _serve(
    workdir: Path, extra: str, address: str | None = None, server: str = ""
) -> tuple[int, str]:
    """`hato serve` of the base configuration plus `extra` (and `server` in [server])."""
    config = workdir / "hato.toml"
    address = address or f"{LOOPBACK}:{free_port()}"
    text = _BASE.format(data=workdir / "data", address=address) + extra
    config.write_text(text.replace("workers = 1\n", "workers = 1\n" + server))
    done = subprocess.run(
        [hato_binary(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HATO_")},
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("hato: ")]
    assert said and not done.stdout, done.stderr
    return done.returncode, "\n".join(said)  # a line for each problem (two files: two)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[limits]\nmax_recipent = 5\n", "limits.max_recipent: unknown key (valid keys: "),
        ('[limits]\nmax_recipients = "many"\n', "limits.max_recipients: expected an integer"),
        ('[queue]\nmin_free_space = "lots"\n', 'queue.min_free_space: "lots" is not a size'),
        ("[dns]\ntimeout = 0\n", "dns.timeout: must be more than 0 and at most 60 seconds"),
        ("[limits]\nmax_header_fields = 5\n", "limits.max_header_fields: must be 100..10000"),
        ("[queue]\ndelay_warning_time = -1\n", "queue.delay_warning_time: must be 0 (no warn"),
        # At or past the 5-day queue lifetime the warning would never come.
        ("[queue]\ndelay_warning_time = 432000\n", "1..431999 seconds (under the 5-day queue"),
        ("[server2]\nx = 1\n", "server2: unknown key"),
        ('[local]\nmailbox_owner = "no-such-user-here"\n', "local.mailbox_owner: "),
    ],
)
def test_a_wrong_key_is_one_line_and_78(workdir: Path, extra: str, words: str) -> None:
    code, line = _serve(workdir, extra)
    assert code == 78 and words in line, line


def test_a_toml_syntax_error_is_one_line_and_78(workdir: Path) -> None:
    code, line = _serve(workdir, '[tls]\ncert = "unfinished\n')
    assert code == 78 and "TOML syntax error" in line and "(at line 13, column" in line, line


def test_a_missing_certificate_is_one_line_and_78(workdir: Path) -> None:
    config = workdir / "hato.toml"
    code, line = _serve(workdir, f'[tls]\ncert = "{workdir}/no.pem"\nkey = "{workdir}/no.key"\n')
    assert code == 78 and f"{config}: tls.cert: file {workdir}/no.pem does not exist" in line
    assert f"{config}: tls.key: file {workdir}/no.key does not exist" in line


def test_a_file_that_is_no_certificate_says_so(workdir: Path) -> None:
    """OpenSSL gives no reason for a file without a PEM block: the line said "(None)"."""
    garbage = workdir / "garbage.pem"
    garbage.write_text("not a certificate\n")
    code, line = _serve(workdir, f'[tls]\ncert = "{garbage}"\nkey = "{garbage}"\n')
    assert code == 78, line
    assert "do not load (no PEM certificate or key in them)" in line and "None" not in line


def test_a_port_in_use_is_one_line_and_73(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        address = f"{LOOPBACK}:{taken.getsockname()[1]}"
        code, line = _serve(workdir, "", address)
    assert code == 73, line
    assert f"listener address {address}: cannot listen: Address already in use" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="[server] user needs root")
def test_a_data_dir_the_server_user_cannot_write_is_one_line_and_78(workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o700)  # root's (a `hato serve` run once as root), not nobody's
    code, line = _serve(workdir, "", server='user = "nobody"\n')
    assert code == 78, line
    assert f"server.data_dir: {data} is not writable by user 'nobody'" in line, line
    assert "fix: chown -R nobody:" in line, line


@pytest.mark.skipif(os.geteuid() != 0, reason="a data dir of another user's needs root")
def test_root_without_a_server_user_in_another_users_data_dir_is_one_line_and_78(
    workdir: Path,
) -> None:
    """Whoever removes [server] user (to use [local] mailbox_owner, which needs root) ran a
    root server in nobody's data directory: its root-owned files then stopped every `hato user`
    (which acts as the directory's owner), with a chown the next start undid."""
    data = workdir / "data"
    data.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    code, line = _serve(workdir, "")
    assert code == 78, line
    assert f"server.user: not set, so hato would run as root, but server.data_dir {data}" in line
    assert "belongs to 'nobody': set [server] user = \"nobody\"" in line
    assert f"chown -R root: {data}" in line
    checked = subprocess.run(
        [hato_binary(), "check-config", "--config", str(workdir / "hato.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1 and "server.user: not set" in checked.stderr, checked.stderr
