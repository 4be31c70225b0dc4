"""A worker that replaces a dead one runs the configuration in force: the last reload's that
the workers applied, not the one the server started with; a reload they refused changes
nothing for it either."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import time
from pathlib import Path

from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup
from test_workers import TwoWorkers


def _wait_count(server: HatoServer, needle: str, count: int) -> None:
    deadline = time.monotonic() + 30  # log lines are written in batches
    while server.log_text().count(needle) < count:
        assert time.monotonic() < deadline, f"not {count} {needle!r}:\n{server.log_text()[-3000:]}"
        time.sleep(0.05)


def _worker_pid(server: HatoServer, index: int) -> int:
    """The last pid `worker-started` logged for worker `index`."""
    found = re.findall(rf"event=worker-started worker={index} pid=(\d+)", server.log_text())
    assert found, server.log_text()[-3000:]
    return int(found[-1])


def _rcpt(server: HatoServer, address: str) -> int:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("a@example.net")[0] == 250
        return smtp.rcpt(address)[0]


def test_a_replacement_worker_runs_the_last_reloaded_configuration(tmp_path: Path) -> None:
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = TwoWorkers(tmp_path / "data", setup)
    server.start()
    stopped: list[int] = []
    try:
        _wait_count(server, "event=ready ", 2)
        assert _rcpt(server, "x@new.test") == 550  # not a domain of ours yet
        good = server.config.read_text()
        reloaded = good + '\n[[domain]]\nname = "new.test"\naccept_any = true\n'
        server.config.write_text(reloaded)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        _wait_count(server, "event=reloaded ", 2)  # both workers
        # Refused (a key that needs a restart): the domain it adds is not in force.
        refused = reloaded.replace('max_message_size = "', 'max_message_size = "2', 1)
        refused += '\n[[domain]]\nname = "refused.test"\naccept_any = true\n'
        server.config.write_text(refused)
        server.proc.send_signal(signal.SIGHUP)
        _wait_count(server, "event=reload-refused ", 2)

        first, second = _worker_pid(server, 0), _worker_pid(server, 1)
        os.kill(second, signal.SIGKILL)
        _wait_count(server, "event=worker-died worker=1 ", 1)
        _wait_count(server, "event=ready ", 3)  # the replacement listens
        assert _worker_pid(server, 1) != second
        # Only the replacement accepts while the first worker is stopped.
        os.kill(first, signal.SIGSTOP)
        stopped.append(first)
        assert _rcpt(server, "x@new.test") == 250  # the reloaded domain (was 550: start-up's)
        assert _rcpt(server, "x@refused.test") == 550
        os.kill(first, signal.SIGCONT)
        stopped.remove(first)
        # The replacement reloads from what is in force: the same file refused again.
        server.proc.send_signal(signal.SIGHUP)
        _wait_count(server, "event=reload-refused ", 4)
        assert server.log_text().count("event=reloaded ") == 2
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.stop()
