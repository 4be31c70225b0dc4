"""`[server] workers = 2`: two processes share the listeners and the queue; a SIGKILL of the
server takes its workers with it, and after a restart every accepted message is there once."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup


class TwoWorkers(HatoServer):
    def _config_text(self) -> str:
        return super()._config_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def test_two_workers_deliver_and_die_with_the_server(tmp_path: Path) -> None:
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = TwoWorkers(tmp_path / "data", setup)
    server.start()
    assert server.proc is not None
    workers = _children(server.proc.pid)
    assert len(workers) == 2
    markers = [f"w-{n}" for n in range(40)]

    def send(marker: str) -> None:
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            body = f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhi\r\n".encode()
            smtp.sendmail("a@example.net", ["u@example.org"], body)

    # Concurrent from the first message on: both workers open the shared databases at once.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, markers))
    assert "event=session-error" not in server.log_text()
    # Issue 13: a session id names one session of one worker (the object's address repeated).
    deadline = time.monotonic() + 30  # log lines are written in batches
    while len(sessions := re.findall(r"event=connect session=(\S+)", server.log_text())) < 40:
        assert time.monotonic() < deadline, sessions
        time.sleep(0.05)
    assert len(set(sessions)) == len(sessions), sessions
    # `hato status` names the server's pid (the supervisor's), not a worker's.
    status = server.hato("status")
    assert f"server:     running, pid {server.proc.pid}, up " in status.stdout, status.stdout
    # `hato reload` reaches every worker through the supervisor and reports the outcome.
    reloaded = server.hato("reload")
    assert (reloaded.returncode, reloaded.stderr) == (0, ""), reloaded.stderr
    assert reloaded.stdout == f"reloaded {server.config}: changed nothing\n"
    deadline = time.monotonic() + 30
    while server.log_text().count("event=reloaded ") < 2:  # both workers
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.05)
    server.kill()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "workers outlived a SIGKILLed supervisor"
        time.sleep(0.05)
    server.start()  # the data directory is free again: nothing holds its lock
    try:
        box = server.mailbox("u", "example.org")
        for marker in markers:
            assert len(maildir.wait_for_marker(box, marker)) == 1
        assert os.path.isdir(box / "new")
    finally:
        server.stop()


def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (/proc's SigCgt, bit 0 is signal 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return caught is not None and int(caught.group(1), 16) & 1 == 1


def test_a_reload_asked_while_the_workers_start_waits_for_them(tmp_path: Path) -> None:
    # SIGHUP's default action ends a process: a reload asked (systemd's ExecReload, an admin's
    # kill -HUP) between the fork of a worker and its handler ended that worker. Now it waits,
    # blocked, and is done once the worker can reload.
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = TwoWorkers(tmp_path / "data", setup)
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(server.start)
        deadline = time.monotonic() + 60
        # The supervisor forwards SIGHUP once it has forked both workers; they are still
        # starting (building their rooms, binding nothing yet) at that moment.
        while (
            server.proc is None
            or len(_children(server.proc.pid)) < 2
            or not _catches_sighup(server.proc.pid)
        ):
            assert time.monotonic() < deadline and not started.done(), server.log_text()
            time.sleep(0.001)
        os.kill(server.proc.pid, signal.SIGHUP)
        started.result()
    try:
        deadline = time.monotonic() + 20
        while server.log_text().count("event=reloaded ") < 2:  # both workers, once ready
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.05)
        assert "event=worker-died" not in server.log_text()
        assert server.alive()
    finally:
        server.stop()
