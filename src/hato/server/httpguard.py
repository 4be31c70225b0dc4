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

`serve_guarded` binds an aiohttp application behind this and returns the running site.
May import model and policy (client_key).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from hato.model import logfmt
from hato.policy import client_key

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

    def __init__(self, inner: asyncio.Protocol, count: _Count) -> None:
        self._inner = inner
        self._count = count
        self._transport: asyncio.Transport | None = None
        self._key: str | None = None  # set once admitted
        self._client = "unknown"
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a blank line split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        try:
            key = client_key(self._client)
        except ValueError:
            key = self._client
        if not self._count.admit(key):
            log.warning(
                logfmt(
                    "http-refused",
                    endpoint=self._count.name,
                    client=self._client,
                    reason="connection-limit",
                )
            )
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


class GuardedSite:
    """A bound endpoint: `port` is the one listened on (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, port: int) -> None:
        self._runner = runner
        self._server = server
        self.port = port

    async def aclose(self) -> None:
        self._server.close()
        await self._runner.cleanup()


async def serve_guarded(
    app: web.Application,
    host: str,
    port: int,
    name: str,
    limits: HttpLimits,
    tls: ssl.SSLContext | None = None,
) -> GuardedSite:
    """Serve `app` on host:port behind `limits`; OSError when it cannot listen."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    handler = runner.server
    assert handler is not None  # set by setup()
    count = _Count(name, limits)

    def factory() -> asyncio.Protocol:
        return _Guarded(cast(asyncio.Protocol, handler()), count)

    try:
        server = await asyncio.get_running_loop().create_server(
            factory,
            host,
            port,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=limits.header_timeout if tls is not None else None,
        )
    except OSError:
        await runner.cleanup()
        raise
    bound = port
    for sock in server.sockets:
        bound = int(sock.getsockname()[1])
        break
    return GuardedSite(runner, server, bound)
