"""Limits for Hato's small HTTP endpoints (/metrics, WKD): connections and header time.

Theory of operation. aiohttp's server takes any number of connections and waits for a request
header as long as the client likes, so a slowloris (a byte of header every few seconds) held
300 connections for minutes. The endpoints serve one short GET each; so every connection goes
through `_Guarded`, a protocol wrapped around aiohttp's own:

* at accept, the endpoint's total (`max_connections`) and the client's share
  (`max_connections_per_ip`, an IPv6 client by its /64) are checked; past either, the
  connection is closed before aiohttp sees it (`event=http-refused reason=connection-limit`);
* every request header must be complete (its blank line seen) within `header_timeout` of the
  connection's start or of the previous request's header; else the connection is closed
  (`event=http-timeout`). An idle keep-alive connection is closed the same way, which costs a
  scraper one reconnect.

With TLS (WKD's `https = true`) the connection is counted from accept by an accept loop of our
own (as on port 465, server/implicit.py): the handshake must finish within `header_timeout` and
holds the client's place while it runs, so a flood of half-open handshakes is capped too.

`serve_guarded` binds an aiohttp application behind this and returns the running site.
May import model and policy (client_key).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from hato.model import logfmt
from hato.policy import client_key

if TYPE_CHECKING:  # imported by serve_guarded: a server without an HTTP endpoint does not
    from aiohttp import web  # hold aiohttp's server (issue 15 item 2)

log = logging.getLogger("hato.http")

# RFC 9112 §2.1: the header section ends with an empty line (CRLF; a lone LF is tolerated).
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 100
    max_per_ip: int = 10
    header_timeout: float = 10.0


class _Count:
    """Open connections of one endpoint, in total and per client."""

    def __init__(self, name: str, limits: HttpLimits) -> None:
        self.name = name
        self.limits = limits
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def admit(self, key: str) -> bool:
        limits = self.limits
        if self.total >= limits.max_connections or self.per_ip.get(key, 0) >= limits.max_per_ip:
            return False
        self.total += 1
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return True

    def leave(self, key: str) -> None:
        self.total -= 1
        left = self.per_ip.get(key, 1) - 1
        if left <= 0:
            self.per_ip.pop(key, None)
        else:
            self.per_ip[key] = left


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the limits."""

    def __init__(
        self, inner: asyncio.Protocol, count: _Count, admitted: tuple[str, str] | None = None
    ) -> None:
        self._inner = inner
        self._count = count
        self._transport: asyncio.Transport | None = None
        self._admitted = admitted  # (key, client) when counted at accept, before TLS
        self._key: str | None = None  # set once admitted
        self._client = "unknown"
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a blank line split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._admitted is not None:
            self._key, self._client = self._admitted
        else:
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            key = _key(self._client)
            if not self._count.admit(key):
                _refused(self._count, self._client)
                transport.close()
                return
            self._key = key
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._key is None:
            return
        seen = self._tail + data
        if any(end in seen for end in _HEADER_ENDS):
            self._arm()  # a header is complete: the next one gets its own time
        self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._key is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._key is None:
            return
        self._count.leave(self._key)
        self._key = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._count.limits.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        if self._transport is None or self._key is None:
            return
        log.info(logfmt("http-timeout", endpoint=self._count.name, client=self._client))
        self._transport.close()


def _key(client: str) -> str:
    try:
        return client_key(client)
    except ValueError:
        return client  # no IP address: counted as it is


def _refused(count: _Count, client: str) -> None:
    log.warning(
        logfmt("http-refused", endpoint=count.name, client=client, reason="connection-limit")
    )


class GuardedSite:
    """A bound endpoint: `port` is the one listened on (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, stop: Callable[[], None], port: int) -> None:
        self._runner = runner
        self._stop = stop
        self.port = port

    async def aclose(self) -> None:
        self._stop()
        await self._runner.cleanup()


async def serve_guarded(
    app: web.Application,
    host: str,
    port: int,
    name: str,
    limits: HttpLimits,
    tls: ssl.SSLContext | None = None,
) -> GuardedSite:
    """Serve `app` on host:port behind `limits`; OSError when it cannot listen. With `tls`,
    connections are counted from accept, their handshake (limited to `header_timeout`)
    included, as on port 465 (server/implicit.py)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    handler = runner.server
    assert handler is not None  # set by setup()
    count = _Count(name, limits)
    loop = asyncio.get_running_loop()

    def factory(admitted: tuple[str, str] | None = None) -> asyncio.Protocol:
        return _Guarded(cast(asyncio.Protocol, handler()), count, admitted)

    try:
        if tls is None:
            server = await loop.create_server(factory, host, port, reuse_address=True)
            bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
            return GuardedSite(runner, server.close, bound)
        sock = _listen(host, port)
    except OSError:
        await runner.cleanup()
        raise
    accepting = loop.create_task(_accept_tls(sock, count, factory, tls))

    def stop() -> None:
        accepting.cancel()
        sock.close()

    return GuardedSite(runner, stop, int(sock.getsockname()[1]))


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _accept_tls(
    sock: socket.socket,
    count: _Count,
    factory: Callable[[tuple[str, str]], asyncio.Protocol],
    tls: ssl.SSLContext,
) -> None:
    loop = asyncio.get_running_loop()
    handshakes: set[asyncio.Task[None]] = set()

    async def handshake(conn: socket.socket, key: str, client: str) -> None:
        try:
            await loop.connect_accepted_socket(
                lambda: factory((key, client)),
                conn,
                ssl=tls,
                ssl_handshake_timeout=count.limits.header_timeout,
            )
        except (OSError, TimeoutError) as exc:  # the session never began: give its place back
            log.info(logfmt("http-timeout", endpoint=count.name, client=client, error=exc))
            count.leave(key)
            conn.close()

    try:
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: the backlog waits meanwhile
                log.warning(logfmt("accept-failed", endpoint=count.name, error=exc))
                await asyncio.sleep(0.1)
                continue
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            key = _key(client)
            if not count.admit(key):
                _refused(count, client)
                conn.close()
                continue
            task = loop.create_task(handshake(conn, key, client))
            handshakes.add(task)
            task.add_done_callback(handshakes.discard)
    finally:
        for task in list(handshakes):
            task.cancel()
