"""What accepting a connection costs a server process: the event loop's own accept
(`create_server`, what one worker uses) against server/spread.py's accept loop (what each of
several workers uses: `AcceptLoop`, `Turn`, `PlainAccepts`), uvloop when installed.

A server process that only greets is forked for each variant; a client opens, reads the
greeting of, and closes N connections one after the other; the server's CPU seconds (from
/proc, user + system) per connection are printed, five rounds interleaved, min and median.
Not a test: `.venv/bin/python benchmarks/accept_cost_bench.py`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import cast

from hato.server.spread import AcceptLoop, LoadBoard, PlainAccepts, Turn, WorkerLoad

CONNECTIONS = 3000
ROUNDS = 5


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.transport.write(b"220 hi\r\n")

    def eof_received(self) -> bool | None:
        self.transport.close()
        return None


async def _serve(kind: str, sock: socket.socket, ready: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "create_server":
        await loop.create_server(Greeter, sock=sock)
    else:
        load = WorkerLoad(LoadBoard(2), 0)
        AcceptLoop(sock, "mx", PlainAccepts(Greeter, load), Turn(load, time.monotonic)).start()
    os.write(ready, b"x")
    await asyncio.sleep(3600)


def _server(kind: str, sock: socket.socket, ready: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(kind, sock, ready))


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(kind: str) -> float:
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    sock.setblocking(False)
    ready, told = os.pipe()
    pid = os.fork()
    if not pid:
        _server(kind, sock, told)
        os._exit(0)
    os.read(ready, 1)
    before = _cpu(pid)
    for _ in range(CONNECTIONS):
        with socket.create_connection(sock.getsockname()) as client:
            while b"\n" not in client.recv(64):
                pass
            client.shutdown(socket.SHUT_WR)
            client.recv(64)
    time.sleep(0.2)  # the last close is handled
    spent = _cpu(pid) - before
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    sock.close()
    return spent / CONNECTIONS * 1e6


def main() -> None:
    results: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for kind in ("create_server", "spread"):
            results.setdefault(kind, []).append(_round(kind))
    for kind, micros in results.items():
        ordered = sorted(micros)
        print(
            f"{kind}: min {ordered[0]:.0f} µs, median {ordered[len(ordered) // 2]:.0f} µs"
            " of server CPU per connection"
        )


if __name__ == "__main__":
    main()
