"""Operations end to end: the real `hato-sendmail` program (a subprocess, like cron or PHP
calls it) submits over a real control socket to a queue, runner and Maildir courier; `hato
queue` sees deferred mail, steers it, and still works with the server stopped.

Until `hato serve` starts the control socket (app.py), the server side runs in this process,
composed as app.py composes it: Queue, QueueRunner, RoutingCourier(Maildir), LocalSubmitter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from peers.maildir import all_messages, wait_for_count

from hato.cli import main
from hato.delivery.local import LocalDomain, RecipientResolver
from hato.delivery.maildir import MaildirCourier
from hato.delivery.router import RoutingCourier
from hato.model import Address, SystemClock
from hato.queue import Queue, QueueRunner
from hato.server.control import (
    ControlServer,
    CountingCourier,
    LocalSubmitter,
    OutcomeCounter,
    serve,
)

SENDMAIL = str(Path(sys.executable).with_name("hato-sendmail"))
CONFIG = """
[server]
hostname = "mail.example.org"
data_dir = "data"

[[listener]]
role = "mx"
address = "127.0.0.1:1"

[[domain]]
name = "example.org"
"""


class Users:
    def exists(self, address: Address) -> bool:
        return address.local in ("alice", "bob")


class Server:
    """The rooms as app.py wires them, with the control socket, on a loop in a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.counter = OutcomeCounter()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        clock = SystemClock()
        queue = await Queue.open(self.data_dir / "queue", clock=clock, node_id="it")
        domains = [LocalDomain("example.org", aliases={"root": ("alice",)})]
        resolver = RecipientResolver(domains, Users())
        maildir = MaildirCourier(self.data_dir / "mailboxes", "mail.example.org", clock=clock)
        courier = CountingCourier(RoutingCourier(resolver.is_local_domain, maildir), self.counter)
        runner = QueueRunner(queue, courier, clock=clock)
        submit = LocalSubmitter(
            queue, resolver, hostname="mail.example.org", domain="example.org", clock=clock
        )
        control = ControlServer(
            queue=queue,
            runner=runner,
            submit=submit,
            clock=clock,
            hostname="mail.example.org",
            domain="example.org",
            counter=self.counter,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                run = tasks.create_task(runner.run())
                sock = tasks.create_task(
                    serve(self.data_dir / "control.sock", control, ready=self.ready.set)
                )
                await self.stop.wait()
                run.cancel()
                sock.cancel()
        finally:
            await queue.close()
            maildir.close()

    def __enter__(self) -> Server:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hato.toml").write_text(CONFIG)
    (tmp_path / "data").mkdir(mode=0o700)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATO_HOME", raising=False)
    return tmp_path


def sendmail(workdir: Path, args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HATO_CONTROL_SOCKET": str(workdir / "data" / "control.sock")}
    return subprocess.run(
        [SENDMAIL, *args], input=stdin, capture_output=True, env=env, timeout=30, check=False
    )


def test_cron_style_sendmail_delivers_to_a_local_maildir(workdir: Path) -> None:
    with Server(workdir / "data") as server:
        done = sendmail(
            workdir,
            ["-t", "-i"],
            b"To: root\nBcc: bob@example.org\nSubject: cron output\n\nline one\n.\nline three\n",
        )
        assert done.returncode == 0, done.stderr
        alice = wait_for_count(workdir / "data" / "mailboxes" / "example.org" / "alice", 1, 10)
        bob = wait_for_count(workdir / "data" / "mailboxes" / "example.org" / "bob", 1, 10)
        stored = alice[0].read_bytes()
        assert b"Bcc" not in stored and b"Bcc" not in bob[0].read_bytes()
        assert b"Delivered-To: bob@example.org\r\n" in bob[0].read_bytes()
        # -i: the lone "." is a line of the message, and LF became CRLF.
        assert stored.endswith(b"\r\n\r\nline one\r\n.\r\nline three\r\n")
        assert b"(Hato, from userid %d)" % os.getuid() in stored
        assert b"\r\nFrom: " in stored and b"\r\nMessage-ID: <" in stored
        # Debian cron's flags: the full name goes into the From header.
        cron = sendmail(
            workdir,
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-f", "daemon", "alice"],
            b"Subject: x\n\nhi\n",
        )
        assert cron.returncode == 0, cron.stderr
        (msg,) = [p for p in _wait_all(workdir, 3) if b"CronDaemon" in p.read_bytes()]
        assert b"From: CronDaemon <daemon@example.org>" in msg.read_bytes()
        assert server.counter.counts().get("delivered") == 3


def _wait_all(workdir: Path, count: int) -> list[Path]:
    import time

    deadline = time.monotonic() + 10
    while len(found := all_messages(workdir / "data" / "mailboxes")) < count:
        assert time.monotonic() < deadline, "not delivered in time"
        time.sleep(0.02)
    return found


def test_refused_recipient_exit_code_and_the_bs_dialog(workdir: Path) -> None:
    with Server(workdir / "data"):
        refused = sendmail(workdir, ["alice", "nobody@example.org"], b"Subject: x\n\nhi\n")
        assert refused.returncode == 67  # EX_NOUSER: nothing was queued
        assert b"nobody@example.org: 550 5.1.1 mailbox unavailable" in refused.stderr
        dialog = (
            b"EHLO localhost\r\nMAIL FROM:<script@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
            b"DATA\r\nSubject: via -bs\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        )
        done = sendmail(workdir, ["-bs"], dialog)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.decode().splitlines()
        assert lines[0] == "220 mail.example.org ESMTP Hato"
        assert any(line.startswith("250 2.0.0 Ok: queued as ") for line in lines)
        assert lines[-1].startswith("221")
        (msg,) = _wait_all(workdir, 1)
        assert b"Subject: via -bs" in msg.read_bytes()
    assert all_messages(workdir / "data" / "mailboxes" / "example.org" / "alice") == []
    down = sendmail(workdir, ["alice"], b"Subject: x\n\nhi\n")
    assert down.returncode == 75 and b"not running" in down.stderr


def test_queue_commands_with_deferred_mail_then_the_server_stopped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Server(workdir / "data"):
        done = sendmail(workdir, ["carol@remote.example"], b"Subject: out\n\nbye\n")
        assert done.returncode == 0, done.stderr
        # No outbound courier here: the runner defers the mail with 451 4.4.0.
        for _ in range(500):
            assert main(["queue", "list"]) == 0
            out = capsys.readouterr().out
            if "attempt(s)" in out:
                break
            threading.Event().wait(0.02)
        assert "<carol@remote.example>" in out
        assert "the last reply was 451 4.4.0 Outbound delivery is not available" in out
        qid = out.splitlines()[1].split()[0]
        assert main(["queue", "hold", qid]) == 0
        capsys.readouterr()
    # Stopped: list and show read the store, and the changes go straight to it.
    assert main(["queue", "show", qid]) == 0
    assert "held by the administrator" in capsys.readouterr().out
    assert main(["queue", "release", qid]) == 0
    assert "due when it starts" in capsys.readouterr().out
    assert main(["queue", "bounce", "--domain", "remote.example"]) == 0
    assert f"{qid}: removed from the queue" in capsys.readouterr().out
    mailq = sendmail(workdir, ["-bp"], b"")
    assert mailq.returncode == 0 and mailq.stdout == b"Mail queue is empty\n"
