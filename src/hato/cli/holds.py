"""``hato user held|release``: the users held after a sending spike, and letting one send again;
``hato user blocked|unblock``: the clients blocked for failed AUTHs, and lifting a block.

A spike (`[limits] spike_recipients` within `spike_window`) with `spike_hold` holds the user:
everything they send gets 451 4.7.1 until `hold_time` passes or an admin releases them here.
A client whose failed AUTHs reach `[auth] max_failures` is blocked for `block_time`
(policy/authlimit.py): 421 4.7.0 at its next connections, until then or until unblocked here.

With the server running, each command asks it on its control socket: the server acts (on its own
store, or its memory: one process alone keeps the AUTH throttle there) and logs the release or
unblock in its own log (`event=admin-unhold`, `admin-unblock`), as it logs `hato queue release`.
With the server stopped, the command acts on the store itself, DATA_DIR/limits.db and
authlimit.db or the shared PostgreSQL store (policy/ratelimit*.py, authlimit_sqlite.py,
authlimit_pg.py), and logs the same line on its stderr (hato.cli.audit; both with the invoking
uid). Every MAIL FROM and RCPT TO reads the hold anew and every connection the block, so the
next message or login is taken at once, by every worker and every node. Started as root, they
act as the data directory's owner (hato.cli.datadir): root never opens a file in the server's
directory itself, where a link could point it at another file, and the database's -wal and -shm
stay the server's.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.datadir import data_dir_of
from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from hato.config import LoadedSettings
    from hato.policy.admin import PolicyAdmin


def held(args: argparse.Namespace) -> int:
    """Each held user and when the hold ends (UTC), one per line."""
    loaded = load(args)
    answer = _ask(loaded, {"op": "user.held"})
    if answer is not None:
        holds = [(u, math.inf if until is None else until) for u, until in answer["held"]]
    else:
        with _offline(loaded) as policy:
            holds = policy.holds()
    if not holds:
        print(f"no user is held (in {_where(loaded)})", file=sys.stderr)
    for user, until in holds:
        print(f"{user} held until {until_text(until)}")
    return 0


def release(args: argparse.Namespace) -> int:
    """Let a held user send again (their spike count starts anew)."""
    loaded = load(args)
    from hato.cli.users import parse_address

    user = str(parse_address(args.address)).casefold()  # as the limiter keys its users
    answer = _ask(loaded, {"op": "user.release", "user": user})
    if answer is not None:
        released = bool(answer["released"])
    else:
        with _offline(loaded) as policy:
            released = policy.release(user)
    if not released:
        raise CommandError(
            f"{user} is not held (in {_where(loaded)}; see: hato user held); nothing changed"
        )
    print(f"released {user}: their mail is accepted again (in {_where(loaded)})")
    return 0


def blocked(args: argparse.Namespace) -> int:
    """Each client blocked for failed AUTHs, as the throttle counts it, and until when (UTC)."""
    loaded = load(args)
    answer = _ask(loaded, {"op": "auth.blocks"})
    if answer is not None:
        blocks = [(str(client), float(until)) for client, until in answer["blocks"]]
    else:
        with _offline(loaded) as policy:
            blocks = policy.blocks()
    if not blocks:
        print(f"no client is blocked for failed AUTHs (in {_auth_where(loaded)})", file=sys.stderr)
    for client, until in blocks:
        print(f"{client} blocked until {until_text(until)}")
    return 0


def unblock(args: argparse.Namespace) -> int:
    """Lift a client's AUTH block (and its count of failures): it may log in again at once."""
    loaded = load(args)
    from hato.policy.admin import NotAClient, blocked_key

    try:
        key = blocked_key(args.client)  # refused here, before anything is opened
    except NotAClient as exc:
        raise CommandError(f"{exc}; nothing changed") from None
    answer = _ask(loaded, {"op": "auth.unblock", "client": key})
    if answer is not None:
        done = answer["unblocked"]
    else:
        with _offline(loaded) as policy:
            done = policy.unblock(key)
    if done is None:
        raise CommandError(
            f"{key} is not blocked (in {_auth_where(loaded)}; see: hato user blocked); "
            "nothing changed"
        )
    print(f"unblocked {done}: it may authenticate again at once (in {_auth_where(loaded)})")
    return 0


def until_text(until: float) -> str:
    """A hold's end as UTC ISO 8601, or "released" when only an admin ends it (hold_time 0)."""
    if math.isinf(until):
        return "released (hold_time = 0)"
    return datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")


def _ask(loaded: LoadedSettings, request: dict[str, Any]) -> dict[str, Any] | None:
    """The running server's answer (it acts and logs in its own log), or None when no server
    answers on its control socket (the command then acts on the store itself)."""
    from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown, check

    path = Path(loaded.settings.server.data_dir) / SOCKET_NAME
    try:
        with ControlClient(path) as client:
            return check(client.request(request))
    except ServerDown:
        return None
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}; nothing changed") from None


def _auth_where(loaded: LoadedSettings) -> str:
    if loaded.settings.store.backend == "postgresql":
        return "the PostgreSQL store"
    from hato.policy.authlimit_sqlite import AUTHLIMIT_DB

    return str(loaded.settings.server.data_dir / AUTHLIMIT_DB)


def _where(loaded: LoadedSettings) -> str:
    if loaded.settings.store.backend == "postgresql":
        return "the PostgreSQL store"
    from hato.policy import LIMITS_DB

    return str(loaded.settings.server.data_dir / LIMITS_DB)


@contextlib.contextmanager
def _offline(loaded: LoadedSettings) -> Iterator[PolicyAdmin]:
    """The holds and blocks on the server's store, without the server, as the data
    directory's owner; a file not made yet (DATA_DIR/limits.db, authlimit.db) holds none."""
    # Imported here, before becoming the owner: Python may be installed where it cannot read.
    import hato.boot.build  # noqa: F401  (what open_limiter imports)
    from hato.boot.store import open_limiter, open_throttle
    from hato.cli.stderrlog import stderr_log
    from hato.cli.stores import store_errors, store_pool
    from hato.model import SystemClock
    from hato.policy import LIMITS_DB
    from hato.policy.admin import PolicyAdmin
    from hato.policy.authlimit_sqlite import AUTHLIMIT_DB

    logged = stderr_log(loaded)
    settings = loaded.settings
    pg = settings.store.backend == "postgresql"
    data_dir = settings.server.data_dir if pg else data_dir_of(loaded)  # as its owner
    clock = SystemClock()
    with store_pool(loaded) as pool, store_errors(_where(loaded)):
        if pool is not None:
            _reachable(pool)  # the throttle fails open: it would say "no block" instead
        limiter = throttle = None
        try:
            if pg or (data_dir / LIMITS_DB).exists():
                limiter = open_limiter(settings, clock, settings.server.data_dir, pool)
            if pg or (data_dir / AUTHLIMIT_DB).exists():
                throttle = open_throttle(settings, clock, pool, data_dir / AUTHLIMIT_DB)
            yield PolicyAdmin(throttle, limiter, logged)
        finally:
            if limiter is not None:
                limiter.close()
            if throttle is not None:
                throttle.close()


def _reachable(pool: ConnectionPool[Any]) -> None:
    import psycopg

    try:
        with pool.connection(timeout=10) as conn:
            conn.execute("SELECT 1")
    except (psycopg.OperationalError, TimeoutError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(f"the PostgreSQL store does not answer: {first}", 75) from None
