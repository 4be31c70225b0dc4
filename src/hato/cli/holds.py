"""``hato user held|release``: the users held after a sending spike, and letting one send again.

A spike (`[limits] spike_recipients` within `spike_window`) with `spike_hold` holds the user:
everything they send gets 451 4.7.1 until `hold_time` passes or an admin releases them here.
The holds live where the server keeps them, DATA_DIR/limits.db or the shared PostgreSQL store
(policy/ratelimit.py, ratelimit_pg.py), so these commands work whether or not the server runs:
every MAIL FROM and RCPT TO reads the hold anew, so the next message after a release is taken
at once, by every worker and every node. Started as root, they act as the data directory's
owner (hato.cli.datadir): root never opens a file in the server's directory itself, where a
link could point it at another file, and the database's -wal and -shm stay the server's.

A release is logged as ``event=admin-unhold`` on the command's stderr (the server's own log
does not see it: the command does not go through the server).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from hato.cli.datadir import data_dir_of
from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    from hato.config import LoadedSettings
    from hato.policy import SendLimiter

log = logging.getLogger("hato.cli")


def held(args: argparse.Namespace) -> int:
    """Each held user and when the hold ends (UTC), one per line."""
    loaded = load(args)
    with _limiter(loaded) as limiter:
        holds = [] if limiter is None else limiter.holds()
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
    with _limiter(loaded) as limiter:
        # Asked first: `unhold` of a user not held would still reset their spike count.
        if limiter is None or not limiter.held(user):
            raise CommandError(
                f"{user} is not held (in {_where(loaded)}; see: hato user held); nothing changed"
            )
        limiter.unhold(user)
    _log_unhold(loaded, user)
    print(f"released {user}: their mail is accepted again (in {_where(loaded)})")
    return 0


def until_text(until: float) -> str:
    """A hold's end as UTC ISO 8601, or "released" when only an admin ends it (hold_time 0)."""
    if math.isinf(until):
        return "released (hold_time = 0)"
    return datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")


def _log_unhold(loaded: LoadedSettings, user: str) -> None:
    """The release as the server logs its events ([server] log_format), on stderr."""
    from hato.boot.logsetup import JsonFormatter, TextFormatter
    from hato.model import logfmt

    handler = logging.StreamHandler(sys.stderr)
    json_format = loaded.settings.server.log_format == "json"
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info(logfmt("admin-unhold", user=user))
    finally:
        log.removeHandler(handler)


def _where(loaded: LoadedSettings) -> str:
    if loaded.settings.store.backend == "postgresql":
        return "the PostgreSQL store"
    from hato.policy import LIMITS_DB

    return str(loaded.settings.server.data_dir / LIMITS_DB)


@contextlib.contextmanager
def _limiter(loaded: LoadedSettings) -> Iterator[SendLimiter | None]:
    """The sending limiter on the server's store, as the data directory's owner; None when
    DATA_DIR/limits.db does not exist yet (no user was ever counted: none is held)."""
    # Imported here, before becoming the owner: Python may be installed where it cannot read.
    import hato.boot.build  # what open_limiter imports
    import hato.boot.logsetup  # noqa: F401  (what _log_unhold imports)
    from hato.boot.store import open_limiter
    from hato.cli.stores import store_errors, store_pool
    from hato.model import SystemClock
    from hato.policy import LIMITS_DB

    settings = loaded.settings
    pg = settings.store.backend == "postgresql"
    data_dir = settings.server.data_dir if pg else data_dir_of(loaded)  # as its owner
    if not pg and not (data_dir / LIMITS_DB).exists():
        yield None
        return
    with store_pool(loaded) as pool, store_errors(_where(loaded)):
        limiter = open_limiter(settings, SystemClock(), settings.server.data_dir, pool)
        try:
            yield limiter
        finally:
            limiter.close()
