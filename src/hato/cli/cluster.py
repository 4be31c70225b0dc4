"""`hato status` with [store] backend = "postgresql": the database (reachable, schema version),
every node of the cluster with its last heartbeat (hato.pgstore.nodes), and the whole shared
queue's figures, read straight from the database, whichever node it runs on and whether or
not this node's server runs.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hato.config import Settings


@dataclass(slots=True)
class Cluster:
    lines: list[str] = field(default_factory=list)  # the database's and the nodes'
    queue: dict[str, Any] | None = None  # the whole queue's figures (None: unreachable)
    warnings: list[str] = field(default_factory=list)


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def cluster_status(settings: Settings) -> Cluster:
    """The database and node lines, the whole queue's figures and the warnings."""
    from hato.boot.process import StartupError
    from hato.boot.store import pg_settings
    from hato.pgstore import SCHEMA_VERSION, StoreUnavailable, connect
    from hato.pgstore.nodes import DOWN_AFTER, NodeState, nodes
    from hato.pgstore.schema import current_version
    from hato.queue.admin import as_json
    from hato.queue.postgres_totals import totals

    found = Cluster()
    out = found.lines
    try:
        pg = pg_settings(settings, "status")
    except StartupError as exc:
        out.append(f"database:   {exc}")
        found.warnings.append(str(exc))
        return found
    import psycopg

    try:
        with connect(pg) as conn:
            version = current_version(conn)
            out.append(f"database:   reachable, schema version {version}")
            if version != SCHEMA_VERSION:
                found.warnings.append(
                    f"the database's schema is version {version}, this Hato's {SCHEMA_VERSION}"
                    " (hato store migrate, or upgrade this node)"
                )
                return found
            cluster = nodes(conn)
            found.queue = as_json(totals(conn, time.time()))
    except StoreUnavailable as exc:
        out.append(f"database:   UNREACHABLE: {exc}")
        found.warnings.append(f"the PostgreSQL store is unreachable: {exc}")
        return found
    except psycopg.Error as exc:
        out.append(f"database:   ERROR: {exc}")
        found.warnings.append(f"the PostgreSQL store answered with an error: {exc}")
        return found
    if not cluster:
        out.append("nodes:      none has sent a heartbeat yet")
    for node in cluster:
        state = node.state.value.upper() if node.state is NodeState.DOWN else node.state.value
        out.append(
            f"node:       {node.name:<16} {state:<8} last seen {_ago(node.age)}, "
            f"pid {node.pid}, {node.version}, {node.address}"
        )
        if node.state is NodeState.DOWN:
            found.warnings.append(
                f"node {node.name} is down: no heartbeat for {node.age:.0f}s "
                f"(more than {DOWN_AFTER} x {node.every:g}s)"
            )
    return found
