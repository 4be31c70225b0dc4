"""The node's heartbeat on the shared PostgreSQL ([store] backend = "postgresql"): the first
worker writes this node's row in `nodes` (hato.pgstore.nodes) every [store] heartbeat seconds,
so that `hato status` on any node lists the cluster, and says in `hato_store_up` (/metrics)
whether the database answered. A beat that fails is logged once per outage
(`store-unavailable what=heartbeat`), and its end once (`store-available`); a clean stop marks
the row stopped.

May import every room (part of the composition root).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import hato
from hato.model import logfmt
from hato.server.metrics import Metrics

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from hato.config import Settings

log = logging.getLogger("hato")
WAIT = 2.0  # seconds to wait for a pooled connection


class Heartbeat:
    def __init__(
        self, pool: ConnectionPool[Any], metrics: Metrics, *, name: str, address: str,
        every: float, pid: int,
    ) -> None:  # fmt: skip
        self._pool = pool
        self._metrics = metrics
        self.name = name
        self._address = address
        self._every = every
        self._pid = pid
        self._started = time.time()
        self._up: bool | None = None

    @classmethod
    def of(
        cls, settings: Settings, pool: ConnectionPool[Any], metrics: Metrics, *, supervised: bool
    ) -> Heartbeat:
        """`supervised`: a worker of a supervisor, whose pid is the server's."""
        pid = os.getppid() if supervised else os.getpid()
        return cls(
            pool,
            metrics,
            name=settings.store.node or socket.gethostname(),
            address=",".join(str(lst.address) for lst in settings.listeners),
            every=settings.store.heartbeat,
            pid=pid,
        )

    def beat(self) -> bool:
        """One heartbeat (blocking); whether the database took it."""
        import psycopg

        from hato.pgstore.nodes import beat

        try:
            with self._pool.connection(timeout=WAIT) as conn:
                beat(
                    conn,
                    name=self.name,
                    address=self._address,
                    pid=self._pid,
                    version=hato.__version__,
                    started=self._started,
                    every=self._every,
                )
        except psycopg.Error as exc:
            if self._up is not False:
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning(logfmt("store-unavailable", what="heartbeat", error=detail))
            self._set(False)
            return False
        if self._up is False:
            log.info(logfmt("store-available", what="heartbeat"))
        self._set(True)
        return True

    def _set(self, up: bool) -> None:
        self._up = up
        self._metrics.store_up.set(1.0 if up else 0.0)

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.beat)
            await asyncio.sleep(self._every)

    def stop(self) -> None:
        """Mark this node stopped cleanly (best effort: the database may be down)."""
        import psycopg

        from hato.pgstore.nodes import stopped

        try:
            with self._pool.connection(timeout=WAIT) as conn:
                stopped(conn, self.name, self._pid)
        except psycopg.Error:
            pass
