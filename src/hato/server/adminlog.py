"""The control socket's log of admin changes: each `admin-*` line with the uid that asked.

A queue or policy op (`hato queue hold`, `hato user release`) is logged with the uid of the
control socket's peer (SO_PEERCRED); `{"op": "admin.log"}` logs the line a command that
changed something itself sends (hato.cli.audit: `hato user add` ...), with the uid it was
started as, and the peer's when that differs (the command may have become the data
directory's owner since). Nothing but one `event=admin-...` logfmt line is taken: a client
cannot forge another event or a second line.

May import hato.model only.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

log = logging.getLogger("hato.control")

MAX_LINE = 1000
_ADMIN_LINE = re.compile(r"event=admin-[a-z0-9-]+( [a-z_]+=[^\x00-\x1f\x7f]*)?")
# The uid of the control connection being served: each connection is its own asyncio task.
PEER_UID: ContextVar[int | None] = ContextVar("control_peer_uid", default=None)


def admin_log(line: str) -> None:
    """Log an admin's change with the uid of the connection that asked for it (called in that
    connection's task: a thread the store logs from would not know it, see of_this_peer)."""
    _log_as(PEER_UID.get(), line)


def of_this_peer() -> Callable[[str], None]:
    """A log for this connection's change, with its uid, that may be called from any thread."""
    return functools.partial(_log_as, PEER_UID.get())


def log_sent(request: dict[str, Any]) -> None:
    """Log the line of an `admin.log` request; ValueError when it is not one admin-* line."""
    line, uid = request.get("line"), request.get("uid")
    if not isinstance(line, str) or len(line) > MAX_LINE or not _ADMIN_LINE.fullmatch(line):
        raise ValueError('admin.log needs a "line": one event=admin-... logfmt line')
    if not isinstance(uid, int) or isinstance(uid, bool):
        raise ValueError('admin.log needs the "uid" the command was started as')
    peer = PEER_UID.get()
    log.info(f"{line} uid={uid}" + ("" if peer in (None, uid) else f" peer_uid={peer}"))


def _log_as(uid: int | None, line: str) -> None:
    log.info(line if uid is None else f"{line} uid={uid}")
