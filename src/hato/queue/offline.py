"""The queue while no server runs: `hato queue ...` and `hato status` on the files themselves.

Must not import anything of hato but model and this room.

The caller holds DATA_DIR/hato.lock (no server can start meanwhile). List, show and stats
read the SQLite store on a connection of their own (read-only unless `writable`); hold,
release, flush and delete run in one transaction there; a bounce opens the store itself
(`store.Queue`, without recovery) so its DSNs go through the same commit path as the running
server's, then frees their rows for the next server to deliver.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from hato.model.queuestore import ActionResult, AdminAction, Selector
from hato.queue.admin import WallClock, bounce
from hato.queue.bounce import Committer, Notifier
from hato.queue.schedule import Schedule
from hato.queue.sqlite_admin import OfflineConnection
from hato.queue.store import Queue

NODE_ID = "admin"  # the lease owner of what an offline bounce queues


class OfflineAdmin(OfflineConnection):
    """The server is stopped: see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        writable: bool,
        log: Callable[[str], None],
        hostname: str | None = None,
        committer: Callable[[Queue], Committer] | None = None,
    ) -> None:
        """`committer`: how `bounce` queues a DSN into the queue opened here (queue/bounce.py;
        the CLI's encrypts a keyed sender's copy as the server's does)."""
        super().__init__(root, writable=writable, log=log)
        self._committer = committer
        self._hostname = hostname or socket.gethostname()

    def apply(self, action: AdminAction, selector: Selector, now: float) -> ActionResult:
        if action is AdminAction.BOUNCE:
            return asyncio.run(self._bounce(selector, now))
        return super().apply(action, selector, now)

    async def _bounce(self, selector: Selector, now: float) -> ActionResult:
        clock = WallClock(lambda: now)
        queue = await Queue.open(self.root, clock=clock, node_id=NODE_ID, recover=False, live=False)
        try:
            notifier = Notifier(
                queue,
                hostname=self._hostname,
                clock=clock,
                schedule=Schedule(),
                committer=self._committer(queue) if self._committer is not None else None,
            )
            result, _ = await bounce(queue, notifier, selector, now=now, log=self._log)
            # Nobody here delivers them: free the DSNs' rows for the next server, now due.
            await queue.free_leases(NODE_ID, recovered=False)
        finally:
            await queue.close()
        return result
