"""The process: exit codes and the listening sockets, bound before the privilege drop (part of
the composition root; the data directory's lock is server.datadir.locked).

Every failure here is a StartupError: one line naming the key or path and the fix, and a
sysexits.h code (78 EX_CONFIG for a configuration that cannot work, so systemd does not
restart in a loop).

May import every room.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable

EX_OK = 0
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

MAX_WORKERS = 64  # a queue id has room for 64 workers' slots (queue/ids.py)


def usable_cpus() -> int:
    """`[server] workers = 0` (the default): one worker per CPU this process may run on (its
    affinity mask, as taskset or a cgroup cpuset leave it; all the machine's elsewhere), at
    most MAX_WORKERS."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    return max(1, min(count, MAX_WORKERS))


class StartupError(Exception):
    """A problem that stops start-up; the message says what and how to fix it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (before privileges are dropped)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(cannot_listen(host, port, exc), EX_CANTCREAT) from exc
    sock.listen(4096)  # a large backlog: slow clients down rather than refuse them
    sock.setblocking(False)
    return sock


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """The one line for a listener that cannot be bound, with the fix that fits the cause."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRNOTAVAIL:
        fix = f"{host} is not an address of this host; use one it has (ip -br addr) or 0.0.0.0"
    elif exc.errno == errno.EACCES:
        fix = "ports below 1024 need root or CAP_NET_BIND_SERVICE (see docs/operations.md)"
    elif exc.errno == errno.EADDRINUSE:
        fix = f"another program listens there (ss -ltnp 'sport = :{port}'); stop it or pick another"
    else:
        fix = "check the address"
    return f"listener address {address}: cannot listen: {exc.strerror}; {fix}"


async def bind(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    factory: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """A listener of plain TCP (port 465 has its own accept loop: server/implicit.py)."""
    try:
        if sock is not None:  # bound by the supervisor, shared by the workers
            return await loop.create_server(factory, sock=sock, backlog=4096)
        return await loop.create_server(
            factory,
            host,
            port,
            backlog=4096,  # a large backlog: slow clients down rather than refuse them
            reuse_address=True,
        )
    except OSError as exc:
        raise StartupError(cannot_listen(host, port, exc), EX_CANTCREAT) from exc
