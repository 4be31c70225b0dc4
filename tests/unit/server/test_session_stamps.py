"""The session reads the user database's stamp once per read of its client (model/moment.py):
pipelined RCPTs share it, and an account removed by another process (`hato user remove`)
between two reads is refused at once, with the answers otherwise kept in memory."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest

from hato.accounts import UserStore
from hato.boot.build import listener_config
from hato.boot.runtime import Endpoints, build_rooms
from hato.model import Address, Role, SystemClock
from hato.server.clientsetup import Published
from hato.server.context import ListenerState, SessionContext
from hato.server.metrics import Metrics
from hato.server.session import SmtpSession
from kit.config import parse

ALICE, BOB = Address("alice", "example.org"), Address("bob", "example.org")


class Transport:
    def __init__(self) -> None:
        self.out = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:  # a close that lasts past CLOSE_GRACE
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _age(path: Path) -> None:
    then = time.time() - 60
    for file in (path, Path(f"{path}-wal")):
        if file.exists():
            os.utime(file, (then, then))


async def _scenario(tmp_path: Path, stats: list[str], reads: list[int]) -> list[bytes]:
    settings = parse("[authcheck]\ninbound = false\n", tmp_path, server='data_dir = "data"')
    endpoints = Endpoints(metrics=Metrics(), published=Published())
    none = cast(Any, None)
    rooms = await build_rooms(settings, endpoints, SystemClock(), none, none, None, None, "t")
    users_db = tmp_path / "data" / "users.db"
    admin = UserStore(users_db)  # `hato user add` in its own process
    admin.add(ALICE, "correct horse battery staple")
    admin.add(BOB, "correct horse battery staple")
    admin.close()
    _age(users_db)
    config = listener_config(settings, rooms.shared, settings.listeners[0], [])
    ctx = SessionContext(
        role=Role.MX, settings=config.settings, queue=rooms.queue,
        resolver=rooms.shared.resolver, clock=SystemClock(), idle_timeout=300.0,
        session_timeout=1800.0, listener=ListenerState("mx", max_connections=9, max_per_ip=9),
        keys=rooms.keys, metrics=rooms.shared.metrics.role(Role.MX), direct=rooms.direct,
    )  # fmt: skip
    ctx.configure(config)
    transport = Transport()
    session = SmtpSession(ctx)
    session.connection_made(cast(Any, transport))
    session.data_received(b"EHLO client.example\r\n")
    replies = []

    def said(data: bytes) -> bytes:
        transport.out = b""
        stats.clear()
        session.data_received(data)
        reads.append(len(stats))
        return transport.out

    replies.append(said(b"MAIL FROM:<s@client.example>\r\nRCPT TO:<alice@example.org>\r\n"
                        b"RCPT TO:<bob@example.org>\r\n"))  # fmt: skip
    replies.append(said(b"RSET\r\n"))
    admin = UserStore(users_db)  # `hato user remove` between two reads
    admin.remove(ALICE)
    admin.close()
    _age(users_db)
    replies.append(said(b"MAIL FROM:<s@client.example>\r\nRCPT TO:<alice@example.org>\r\n"))
    session.connection_lost(None)
    return replies


def test_pipelined_rcpts_share_one_stamp_and_a_removed_user_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats: list[str] = []
    reads: list[int] = []  # users.db stat(2) calls of each read of the client
    real_stat = os.stat

    def counted(name: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(name).endswith(("users.db", "users.db-wal")):
            stats.append(str(name))
        return real_stat(name, *args, **kwargs)

    monkeypatch.setattr("hato.boot.dbcache.os.stat", counted)
    first, _, after = asyncio.run(_scenario(tmp_path, stats, reads))
    assert first.count(b"250 ") == 3, first
    assert after.startswith(b"250 ") and b"\r\n550 5.1.1" in after, after
    # users.db and its WAL stat'ed once per read with recipients, not per RCPT.
    assert reads == [2, 0, 2]
