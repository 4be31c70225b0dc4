"""What a local user who is not the admin meets with the `hato` command and the submission
socket (docs/security.md, 2026-12-08 eighth session), against the real `hato serve` with the
data directory opened 0711 for the maildrop as docs/operations.md says.

The admin's commands stay closed to it (the 0600 control socket, the 0700 stores), and say so
in one line with exit 77 (EX_NOPERM): `hato status`, `hato queue list` and `hato dkim keygen`
printed a PermissionError traceback, and `hato status` with the server stopped said
"0 message(s)" of a queue it could not read. A request line nested 60,000 deep on the
submission socket (any local user's) put a RecursionError traceback in the server's log.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.localuser import as_nobody
from peers.server import DomainSetup, MailSetup

# Imported before forking: `nobody` may not read the interpreter's own files.
import hato.authcheck
import hato.cli.cluster
import hato.cli.dkim
import hato.cli.status
import hato.queue.admin
import hato.queue.offline
from hato.cli import main as hato_main

PRELOADED = (
    hato.authcheck,
    hato.cli.cluster,
    hato.cli.dkim,
    hato.cli.status,
    hato.queue.offline,
)


class SocketHato(HatoServer):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, MailSetup(domains=(DomainSetup("example.test", users=("a",)),)))
        self.submit_socket = self.work / "run" / "submit.sock"

    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace("[server]\n", f'[server]\nsubmit_socket = "{self.submit_socket}"\n', 1)


@pytest.fixture
def hato_server(workdir: Path) -> Iterator[SocketHato]:
    server = SocketHato(workdir / "data")
    server.start()
    server.data_dir.chmod(0o711)  # the maildrop's way in (docs/operations.md)
    server.work.chmod(0o755)
    server.config.chmod(0o644)
    try:
        yield server
    finally:
        server.stop()


def _hato_as_root(server: HatoServer, *args: str) -> int:
    return hato_main([*args, "--config", str(server.config)])


def _hato_as_nobody(server: HatoServer, *args: str) -> tuple[int, str, str]:
    return as_nobody(lambda: hato_main([*args, "--config", str(server.config)]))


def test_the_admin_commands_tell_a_local_user_in_one_line(hato_server: SocketHato) -> None:
    closed = {
        ("status",): "control.sock: Permission denied",
        ("queue", "list"): "control.sock: Permission denied",
        ("dkim", "keygen", "example.test"): "dkim: Permission denied",
    }
    # As root first: what the commands import on their way is loaded before the fork.
    assert _hato_as_root(hato_server, "status") == 0
    for args, where in closed.items():
        code, out, err = _hato_as_nobody(hato_server, *args)
        assert code == 77, (args, code, out, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
        assert where in err and "run it as root or as the server's user" in err, (args, err)
    assert not (hato_server.data_dir / "dkim").exists()
    hato_server.stop()
    code, out, err = _hato_as_nobody(hato_server, "status")
    assert code == 77 and "queue.db: Permission denied" in err, (code, out, err)
    assert "0 message(s)" not in out


def test_a_request_nested_too_deep_on_the_submission_socket_is_answered(
    hato_server: SocketHato,
) -> None:

    def nested() -> int:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(hato_server.submit_socket))
            client.sendall(b"[" * 60000 + b'\n{"op":"hello"}\n')
            answers = client.makefile("rb")
            print(answers.readline().decode().strip())
            print(answers.readline().decode().strip())
        return 0

    code, out, err = as_nobody(nested)
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {"ok": False, "error": "not a JSON line"}, (out, err)
    assert second["ok"] is True  # the connection goes on
    assert "Traceback" not in hato_server.log_text()


def _hold_bodies(user: pwd.struct_passwd, path: Path, count: int) -> tuple[int, int]:
    """A child that is `user`, with `count` submissions on the submission socket that declare
    1000 octets and send 10; it keeps them open until the returned pipe is closed. Returns
    (pid, that pipe's write end), once its connections are made."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            held = []
            for _ in range(count):
                client = socket.socket(socket.AF_UNIX)
                client.connect(str(path))
                request = {"op": "submit", "from": "", "rcpt": ["a"], "size": 1000}
                client.sendall(json.dumps(request).encode() + b"\n" + b"x" * 10)
                held.append(client)
            os.write(ready_w, b"ready\n")
            os.read(done_r, 1)  # until the parent closes it
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    assert os.read(ready_r, 16) == b"ready\n"
    os.close(ready_r)
    return pid, done_w


def test_local_users_sending_slowly_do_not_hold_roots_mail(hato_server: SocketHato) -> None:
    """Two local users, four slow submissions each, held all 8 body slots of the server for
    BODY_TIMEOUT (300 s): root's hato-sendmail (cron's mail, on the control socket) waited
    past its client's 60 s and gave up with exit 75. Now a uid has at most 2 bodies at once on
    the submission socket (more are refused for now: 451 4.3.2), and the control socket has
    slots of its own."""
    children = [
        _hold_bodies(pwd.getpwnam(name), hato_server.submit_socket, 4)
        for name in ("nobody", "www-data")
    ]
    try:
        done = hato_server.sendmail(["a@example.test"], b"Subject: from cron\n\nx\n")
        assert done.returncode == 0, done.stderr
        for name in ("nobody", "www-data"):
            uid = pwd.getpwnam(name).pw_uid
            assert hato_server.wait_for_log(rf"event=control-busy uid={uid} reason=bodies")
    finally:
        for _, release in children:
            os.close(release)  # all first: each child holds a copy of the others' ends
        for pid, _ in children:
            os.waitpid(pid, 0)
