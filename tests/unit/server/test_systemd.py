"""sd_notify over a real unix datagram socket, as systemd's end of it would see it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hato.server.systemd import Notifier, notify, run_watchdog, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's side: a bound datagram socket and the $NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_and_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on 3 ports")
    assert received(sock) == ["READY=1", "STATUS=listening on 3 ports"]
    assert notifier.status("queue: 4 messages\nsecond line")
    assert received(sock) == ["STATUS=queue: 4 messages second line"]
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    notifier.close()


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock)
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after
    notifier.reloading(monotonic_usec=42)
    assert received(sock) == ["RELOADING=1", "MONOTONIC_USEC=42"]
    notifier.close()


def test_the_abstract_namespace_is_spelled_with_an_at_sign() -> None:
    name = f"hato-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert received(sock) == ["READY=1"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notify("READY=1", {})


def test_an_unsupported_socket_kind_is_ignored() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.ready()
    assert "event=sd-notify-failed" in caplog.text
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


INTERVAL = 2.0  # seconds: one pet a second


def test_the_watchdog_is_petted_every_half_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        task = asyncio.create_task(run_watchdog(notifier, interval=INTERVAL))
        start = loop.time()
        while len(times) < 3:
            data = await loop.sock_recv(sock, 100)
            assert data == b"WATCHDOG=1"
            times.append(loop.time() - start)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return times

    times = asyncio.run(main())
    # The first right away, then one per half interval (bounds wide enough for a loaded
    # machine to be late by a good part of a second, and still tell the two apart).
    half = INTERVAL / 2
    assert times[0] < 0.9 * half
    assert 0.9 * half < times[2] - times[1] < 5 * half
    notifier.close()


def test_a_blocked_loop_or_an_unhealthy_server_stops_the_pets(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sock.setblocking(False)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    healthy = [True]

    async def main() -> tuple[int, int, int, int]:
        task = asyncio.create_task(run_watchdog(notifier, 0.02, lambda: healthy[0]))
        await asyncio.sleep(0.05)
        turning = drain(sock)
        time.sleep(0.1)  # noqa: ASYNC251 - on purpose: the loop does not turn, so no pet
        blocked = drain(sock)
        await asyncio.sleep(0.05)
        resumed = drain(sock)
        healthy[0] = False
        await asyncio.sleep(0.1)
        drain(sock)  # a pet sent just before the flag changed
        await asyncio.sleep(0.1)
        unhealthy = drain(sock)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return turning, blocked, resumed, unhealthy

    turning, blocked, resumed, unhealthy = asyncio.run(main())
    assert turning >= 2
    assert blocked == 0
    assert resumed >= 1
    assert unhealthy == 0
    notifier.close()


def drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(100)
        except BlockingIOError:
            return count
        count += 1
