"""The control socket's ops that change the running server (`hato reload`, `hato tls renew`,
`hato report send`) are each logged as one `admin-*` line with the uid of the socket's peer
(SO_PEERCRED), whatever came of them; an op the server cannot carry out logs nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import pytest

from hato.model import SystemClock
from hato.queue import QueueStore
from hato.server.control import ControlServer, serve


async def _ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        answer: dict[str, Any] = json.loads(await reader.readline())
        return answer
    finally:
        writer.close()
        await writer.wait_closed()


def _asked(tmp_path: Path, request: dict[str, Any], **ops: Any) -> dict[str, Any]:
    """`request`'s answer from a ControlServer with `ops` (reload, renew, reports)."""

    class Runner:
        def wake(self) -> None:
            pass

    async def scenario() -> dict[str, Any]:
        server = ControlServer(
            queue=cast(QueueStore, None), runner=Runner(), submit=None, clock=SystemClock(),
            hostname="mail.example.org", domain="example.org", **ops,
        )  # fmt: skip
        ready = asyncio.Event()
        path = tmp_path / "control.sock"
        task = asyncio.create_task(serve(path, server, ready=ready.set))
        try:
            await ready.wait()
            return await _ask(path, request)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(scenario())


def _admin_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=admin-")]


ME = os.getuid()


async def _reload(applied: bool) -> dict[str, Any]:
    return {"applied": applied, "source": "hato.toml", "changed": ["limits"] if applied else []}


@pytest.mark.parametrize(
    ("applied", "line"),
    [
        (True, f"event=admin-reload applied=True changed=limits uid={ME}"),
        (False, f"event=admin-reload applied=False uid={ME}"),  # refused: nothing changed
    ],
)
def test_a_reload_is_logged_with_the_peer_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, applied: bool, line: str
) -> None:
    caplog.set_level(logging.INFO, logger="hato.control")
    answer = _asked(tmp_path, {"op": "reload"}, reload=lambda: _reload(applied))
    assert answer["ok"] and answer["reload"]["applied"] is applied
    assert _admin_lines(caplog) == [line]


async def _renewed() -> dict[str, str]:
    return {"serial": "1f", "issuer": "CN=Test CA", "not_after": "2027-03-01T00:00:00+00:00"}


async def _failed() -> dict[str, str]:
    return {"error": "rejectedIdentifier: not ours"}


def test_a_certificate_renewal_is_logged_with_the_peer_uid_and_its_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hato.control")
    answer = _asked(tmp_path, {"op": "tls.renew"}, renew=_renewed)
    assert answer["ok"] and answer["certificate"]["serial"] == "1f"
    failed = _asked(tmp_path, {"op": "tls.renew"}, renew=_failed)
    assert not failed["ok"] and "the order failed" in failed["error"]
    assert _admin_lines(caplog) == [
        f"event=admin-tls-renew serial=1f not_after=2027-03-01T00:00:00+00:00 uid={ME}",
        f'event=admin-tls-renew error="rejectedIdentifier: not ours" uid={ME}',
    ]


def test_a_report_send_is_logged_with_the_peer_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def reports(now: bool) -> dict[str, list[str]]:
        return {"sent": ["example.org to dmarc@remote.test"], "skipped": []}

    caplog.set_level(logging.INFO, logger="hato.control")
    answer = _asked(tmp_path, {"op": "reports.send", "now": True}, reports=reports)
    assert answer["ok"] and answer["reports"]["sent"]
    assert _admin_lines(caplog) == [f"event=admin-report-send now=True sent=1 skipped=0 uid={ME}"]


def test_an_op_the_server_cannot_carry_out_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hato.control")
    for op in ("reload", "tls.renew", "reports.send"):
        assert not _asked(tmp_path, {"op": op})["ok"]
    assert _admin_lines(caplog) == []
