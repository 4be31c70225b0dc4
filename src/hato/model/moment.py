"""One step of the event loop's thread: the commands of one read, handled without a wait.

Answers that only another process can change (the user and key databases: boot/dbcache.py)
need their database's stamp read once per step, not once per lookup: a change that finished
before the step began (before its octets were read) is seen, as with a stamp read per lookup;
one that lands during the step is seen by the next, as if the client's commands had come a
moment earlier. So ten pipelined RCPTs cost the stamps of one. A step is per thread: a worker
thread, or code outside any step (the queue runner, a commit after its waits), reads the stamp
on every lookup as before.

Stdlib values only (model).
"""

from __future__ import annotations

import threading


class _Steps(threading.local):
    memo: dict[object, object] | None = None


_steps = _Steps()


def begin() -> bool:
    """Open a step in this thread; False when one is open already (the outer one ends it)."""
    if _steps.memo is not None:
        return False
    _steps.memo = {}
    return True


def end() -> None:
    """End this thread's step: from now on every lookup reads the stamps again."""
    _steps.memo = None


def memo() -> dict[object, object] | None:
    """What this step has read so far, by its reader; None outside a step."""
    return _steps.memo
