"""One log line for each thing an admin changes, in the server's own log when it runs.

Every state-changing command (`hato user add|passwd|remove|release|unblock`, `hato key
import|remove|policy|encrypt-existing|wkd-export`, `hato dkim keygen`, `hato queue
hold|release|flush|delete|bounce`, `hato store migrate|copy`, `hato reload`, `hato tls renew`,
`hato report send`) records one `event=admin-...` line naming the action and its object, never
a password or key material, with the uid that ran the command. With the server running, the
line goes to its log through the control socket (`{"op": "admin.log"}`; the queue, user,
reload, tls and report ops log their own, server/control.py); with it stopped, or a server
that does not take the op, the command writes it on its stderr, formatted as the server
formats its log ([server] log_format).

The uid is the one the command was started with (hato.cli.stderrlog).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hato.cli.stderrlog import INVOKER, stderr_log

if TYPE_CHECKING:
    from hato.config import LoadedSettings


def record(loaded: LoadedSettings, line: str) -> None:
    """Log `line` (a logfmt `admin-*` event) and the invoking uid: in the running server's
    log, else on stderr. Called after the change is made: a log that fails changes nothing."""
    from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown

    path = Path(loaded.settings.server.data_dir) / SOCKET_NAME
    try:
        with ControlClient(path, timeout=10) as client:
            if client.request({"op": "admin.log", "line": line, "uid": INVOKER}).get("ok"):
                return
    except (ServerDown, OSError, ValueError):
        pass  # no server (or it cannot be asked): the line is not lost, it goes to stderr
    stderr_log(loaded)(line)
