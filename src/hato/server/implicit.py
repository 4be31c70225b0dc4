"""Port 465 (RFC 8314 §3.3, implicit TLS): our own accept loop, so that the connection limits
hold from accept, through the TLS handshake.

Theory of operation. With `create_server(ssl=...)` the event loop runs the handshake itself
and calls the session only once it is done: connections in the handshake were counted by no
limit, and one address could hold hundreds of them. (Doing the handshake from the session with
`start_tls` instead races with uvloop, which may hand the ClientHello to the plain session
before `start_tls` takes the transport over.) So this loop accepts each connection itself,
checks the listener's total and per-IP limits (an IPv6 client by its /64), holds the client's
place (`ListenerState.reserve`) and runs the handshake with `connect_accepted_socket`, under
`[limits] tls_handshake_timeout`, with the certificate in force at that moment (a reload
reaches the next handshake). The session made when the handshake is done counts itself as
usual (`ListenerState.enter`); then the place held for the handshake is given back, as it is
when a handshake fails or times out. A client past its limit is closed without a byte: on
this port nothing may be sent in clear, and a handshake is what the limit is there to spare.
The accepting itself is server/spread.py's loop, which with several workers leaves a
connection to a less loaded worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from hato.model import logfmt
from hato.server.context import SessionContext
from hato.server.spread import AcceptLoop, Connection, Turn

log = logging.getLogger("hato.smtpd")


class ImplicitTlsListener:
    """Accepts on a bound, listening socket; `close()` stops accepting and ends handshakes
    still in progress (sessions already made are drained by the composition root). With
    `turn`, it takes turns with the other workers (server/spread.py)."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: SessionContext,
        factory: Callable[[], asyncio.Protocol],
        turn: Turn | None = None,
    ) -> None:
        self._ctx = ctx
        self._factory = factory
        self._accepting = AcceptLoop(sock, ctx.listener.name, self._accepted, turn)
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._accepting.start()

    def close(self) -> None:
        self._accepting.close()
        for task in list(self._handshakes):
            task.cancel()

    def _accepted(self, conn: Connection, peer: Any) -> None:
        listener = self._ctx.listener
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self._ctx.metrics.connection()
        if not listener.admit(ip):
            # RFC 5321 §3.8 would have us say 421, but not in clear on this port.
            log.warning(
                logfmt(
                    "connection-refused",
                    listener=listener.name,
                    client=ip,
                    reason="connection-limit",
                )
            )
            conn.discard()
            return
        listener.reserve(ip)
        task = asyncio.get_running_loop().create_task(self._handshake(conn, ip))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: Connection, ip: str) -> None:
        tls = self._ctx.tls
        try:
            if tls is None:
                raise ConnectionAbortedError("no certificate")
            await asyncio.get_running_loop().connect_accepted_socket(
                self._factory,
                conn,  # type: ignore[arg-type]
                ssl=tls.current,
                ssl_handshake_timeout=self._ctx.tls_handshake_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError and ConnectionError are OSErrors
            log.info(logfmt("tls-failed", listener=self._ctx.listener.name, client=ip, error=exc))
            with contextlib.suppress(OSError):
                conn.discard()  # the transport closed it already; else it is closed here
        finally:
            self._ctx.listener.release(ip)
