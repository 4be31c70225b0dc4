"""The control socket over a real unix socket (a queue store in tmp, a fake submit), and
`hato queue` / `hato status` against it and against the store with the server stopped."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hato.cli import main
from hato.cli.queue import ControlClient, ServerDown
from hato.model import Address, Reply, ReversePath, SystemClock
from hato.queue import BodyWriter, Queue, RowUpdate, Status
from hato.server.control import ControlServer, serve
from hato.server.deliverycount import OutcomeCounter
from hato.server.localsubmit import LocalBody, SubmitRefused

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


class FakeRunner:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class FakeSubmit:
    def __init__(self, spool: Path) -> None:
        self.calls: list[tuple[ReversePath, list[str], bytes, int | None]] = []
        self.spool = spool

    def new_body(self, recipients: Sequence[str] = ()) -> LocalBody:
        return LocalBody(BodyWriter("QID123", str(self.spool / "QID123")))

    async def __call__(
        self,
        mail_from: ReversePath,
        recipients: list[str],
        message: bytes | LocalBody,
        *,
        uid: int | None,
    ) -> str:
        if any(r.startswith("nobody") for r in recipients):
            raise SubmitRefused(
                Reply(550, "5.1.1", "rejected"), {"nobody": Reply(550, "5.1.1", "unknown")}
            )
        if isinstance(message, bytes):
            data = message
        else:
            assert isinstance(message.writer, BodyWriter)
            data = message.writer.peek_inline()
        self.calls.append((mail_from, recipients, data, uid))
        return "QID123"


class ServerThread:
    """A queue and the control server on an event loop of their own, like `hato serve`."""

    def __init__(self, data_dir: Path, public: Path | None = None) -> None:
        self.data_dir = data_dir
        self.runner = FakeRunner()
        self.submit = FakeSubmit(data_dir.parent)
        self.counter = OutcomeCounter()
        self.public = public
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))
        self.stop_event: asyncio.Event | None = None
        self.queue: Queue | None = None

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        self.queue = await Queue.open(
            self.data_dir / "queue", clock=SystemClock(), node_id="test", lease_seconds=900
        )
        server = ControlServer(
            queue=self.queue,
            runner=self.runner,
            submit=self.submit,
            clock=SystemClock(),
            hostname="mail.example.org",
            domain="example.org",
            max_message_size=1000,
            counter=self.counter,
        )
        task = asyncio.create_task(
            serve(
                self.data_dir / "control.sock",
                server,
                submit_path=self.public,
                ready=self.ready.set,
            )
        )
        await self.stop_event.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.queue.close()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        self.loop.close()


async def queue_deferred(queue: Queue, to: str, reply: str) -> str:
    body = queue.new_body()
    body.write(b"Subject: test\r\n\r\nbody\r\n")
    qid = await queue.commit(
        body,
        mail_from=Address.parse("alice@example.org"),
        recipients=[(Address.parse(to), Address.parse(to))],
        prefix=b"",
        params={},
    )
    for pending in await queue.wait_fresh():
        updates = [
            RowUpdate(r.row_id, Status.QUEUED, 1, time.time() + 3600, reply)
            for r in pending.recipients
        ]
        await queue.record(pending.message.queue_id, updates)
        queue.release(pending.message.queue_id)
    return qid


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hato.toml").write_text(CONFIG)
    (tmp_path / "data").mkdir(mode=0o700)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATO_HOME", raising=False)
    return tmp_path


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerThread]:
    with ServerThread(workdir / "data", public=workdir / "submit.sock") as srv:
        yield srv


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_control_socket_is_owner_only_and_speaks_json_lines(server: ServerThread) -> None:
    path = server.data_dir / "control.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.public or path).st_mode) == 0o666
    with ControlClient(path) as client:
        assert client.request({"op": "hello"})["domain"] == "example.org"
        assert client.request({"op": "nope"}) == {"ok": False, "error": "nope: unknown op"}
        assert client.request({"op": "queue.delete"})["error"] == (
            'queue.delete of every message needs "all": true'
        )
        assert client.request({"op": "queue.show", "id": "X"})["error"].startswith("X: no such")
        server.counter.add("delivered", 3)
        status = client.request({"op": "status"})
        assert status["last_hour"] == {"delivered": 3} and status["queue"]["messages"] == 0
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(path))
    raw.sendall(b"not json\n")
    assert json.loads(raw.makefile("rb").readline()) == {"ok": False, "error": "not a JSON line"}
    raw.close()


def test_submit_op_and_the_public_socket(server: ServerThread) -> None:
    assert server.public is not None
    with ControlClient(server.public) as client:
        message = b"Subject: x\r\n\r\nhi\r\n"
        request = {"op": "submit", "from": "bob", "rcpt": ["root"], "size": len(message)}
        assert client.request(request, message) == {"ok": True, "id": "QID123"}
        refused = client.request({**request, "rcpt": ["nobody"]}, message)
        assert refused["refused"] == {"nobody": "550 5.1.1 unknown"}
        assert refused["temporary"] is False
        # The public socket takes submissions only.
        assert "not allowed" in client.request({"op": "queue.list"})["error"]
    ((sender, rcpts, body, uid),) = server.submit.calls
    assert (str(sender), rcpts, body, uid) == ("bob@example.org", ["root"], message, os.getuid())
    # Over the limit: the octets are not read, the connection is closed.
    with (
        ControlClient(server.data_dir / "control.sock") as client,
        pytest.raises(ConnectionResetError),
    ):
        client.request({"op": "submit", "from": "", "rcpt": ["a"], "size": 5000}, b"")


def test_queue_commands_through_the_running_server(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.queue is not None
    qid = server.call(queue_deferred(server.queue, "bob@mx.test", "451 4.7.10 no STARTTLS"))
    code, out, _ = cli(capsys, "queue", "list")
    assert code == 0 and qid in out and "alice@example.org> -> <bob@mx.test>" in out
    assert "blocked by the TLS policy: 451 4.7.10 no STARTTLS" in out
    code, out, _ = cli(capsys, "queue", "list", "--json")
    assert [row["recipient"] for row in json.loads(out)] == ["bob@mx.test"]
    code, out, _ = cli(capsys, "queue", "show", qid)
    assert "why: blocked by the TLS policy" in out and "Subject: test" in out
    assert cli(capsys, "queue", "flush", qid)[:2] == (0, "flushed 1 recipient(s) of 1 message(s)\n")
    assert server.runner.wakes == 1
    assert cli(capsys, "queue", "hold", "--domain", "mx.test")[0] == 0
    assert cli(capsys, "queue", "release", qid)[0] == 0 and server.runner.wakes == 2
    code, _, err = cli(capsys, "queue", "delete")
    assert code == 2 and "give queue ids, ALL" in err
    code, out, _ = cli(capsys, "queue", "bounce", "ALL")
    assert code == 0 and f"{qid}: removed from the queue" in out
    # What is left is the DSN to the sender that the bounce queued (RFC 3464).
    left = cli(capsys, "queue", "list")[1]
    assert qid not in left and "<>" in left
    code, _, err = cli(capsys, "queue", "hold", qid)
    assert code == 1 and f"{qid}: no recipient to hold" in err


def test_queue_commands_with_the_server_stopped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(workdir / "data") as srv:
        assert srv.queue is not None
        qid = srv.call(queue_deferred(srv.queue, "bob@mx.test", "451 4.4.3 DNS failure"))
    with pytest.raises(ServerDown):
        ControlClient(workdir / "data" / "control.sock")
    code, out, _ = cli(capsys, "queue", "list")
    assert code == 0 and "DNS lookup failed: 451 4.4.3 DNS failure" in out
    code, out, err = cli(capsys, "queue", "hold", qid)
    assert code == 0 and out.startswith("held 1 recipient(s)")
    # No server log to write to: the change is logged on the command's stderr, with its uid.
    assert f"event=admin-hold id={qid} to=<bob@mx.test> uid={os.getuid()}\n" in err
    code, out, _ = cli(capsys, "queue", "show", qid)
    assert "held by the administrator" in out
    code, out, _ = cli(capsys, "status")
    assert code == 1  # warnings
    assert "server:     not running" in out and "1 held" in out
    code, out, err = cli(capsys, "queue", "delete", qid)
    assert code == 0 and f"{qid}: removed from the queue" in out
    assert f"event=admin-delete id={qid} to=<bob@mx.test> uid={os.getuid()}\n" in err


def test_admin_changes_are_logged_by_the_running_server_with_the_uid(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue op gets the uid of the socket's peer; `admin.log` (hato.cli.audit) logs the
    line a command sends, with the uid it was started as, and nothing but an admin-* line."""
    assert server.queue is not None
    qid = server.call(queue_deferred(server.queue, "bob@mx.test", "451 4.4.3 DNS failure"))
    me = os.getuid()
    with (
        caplog.at_level(logging.INFO, "hato.control"),
        ControlClient(server.data_dir / "control.sock") as client,
    ):
        assert client.request({"op": "queue.hold", "id": qid})["ok"]
        line = "event=admin-user-add user=bob@example.org"
        assert client.request({"op": "admin.log", "line": line, "uid": me}) == {"ok": True}
        assert client.request({"op": "admin.log", "line": line, "uid": me + 1}) == {"ok": True}
        for bad in ("event=accepted id=X", f"{line}\nevent=admin-forged x=1", "admin-x", ""):
            answer = client.request({"op": "admin.log", "line": bad, "uid": me})
            assert answer["ok"] is False and "admin.log needs" in answer["error"]
        assert client.request({"op": "admin.log", "line": line})["ok"] is False  # no uid
    logged = [r.getMessage() for r in caplog.records if "event=admin-" in r.getMessage()]
    assert logged == [
        f"event=admin-hold id={qid} to=<bob@mx.test> uid={me}",
        f"{line} uid={me}",
        f"{line} uid={me + 1} peer_uid={me}",  # started as one uid, asking as another
    ]


def test_the_offline_lock_is_not_opened_through_a_link(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(workdir / "data"):
        pass
    victim = workdir / "nologin"  # root creating /etc/nologin locks every user out
    (workdir / "data" / "hato.lock").unlink(missing_ok=True)
    (workdir / "data" / "hato.lock").symlink_to(victim)
    code, _, err = cli(capsys, "queue", "list")
    assert code != 0 and "hato.lock" in err
    assert not victim.exists()
