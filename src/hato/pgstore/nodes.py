"""The nodes of a cluster on the shared PostgreSQL: each writes a heartbeat row, and any node's
`hato status` lists them all.

Theory of operation: a running node upserts its row in `nodes` (hato.pgstore.schema, 4) every
`every` seconds: its name ([store] node, else the host name), its listeners' addresses, pid,
version and start time. The time of the last beat is the database's `now()`, never the node's
clock, so nodes whose clocks disagree are still compared fairly. A node not seen for more than
DOWN_AFTER of its own intervals is down (it died, or cannot reach the database); a node that
stopped cleanly says so (`stopped`) and is not counted as down. A row stays until the admin
removes it (`DELETE FROM nodes WHERE name = ...`): a node gone for good is then still seen.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import psycopg

HEARTBEAT = 5.0  # seconds between a node's heartbeats
DOWN_AFTER = 3  # intervals without a heartbeat before a node counts as down


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"  # no heartbeat for DOWN_AFTER intervals: died, or cut off from the database
    STOPPED = "stopped"  # stopped cleanly


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str
    pid: int
    version: str
    started: float  # wall clock, seconds
    last_seen: float  # wall clock (the database's), seconds
    age: float  # seconds since the last heartbeat, by the database's clock
    every: float
    state: NodeState


def beat(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    address: str,
    pid: int,
    version: str,
    started: float,
    every: float = HEARTBEAT,
) -> None:
    """Write this node's heartbeat (one statement, autocommit)."""
    conn.execute(
        "INSERT INTO nodes (name, address, pid, version, started, last_seen, every)"
        " VALUES (%s, %s, %s, %s, to_timestamp(%s), now(), %s)"
        " ON CONFLICT (name) DO UPDATE SET address = excluded.address, pid = excluded.pid,"
        " version = excluded.version, started = excluded.started, last_seen = now(),"
        " every = excluded.every, stopped = NULL",
        (name, address, pid, version, started, every),
    )


def stopped(conn: psycopg.Connection[Any], name: str, pid: int) -> None:
    """Mark this node stopped cleanly (at the end of `hato serve`)."""
    conn.execute(
        "UPDATE nodes SET stopped = now(), last_seen = now() WHERE name = %s AND pid = %s",
        (name, pid),
    )


def nodes(conn: psycopg.Connection[Any]) -> list[Node]:
    """Every node that ever beat, by name."""
    rows = conn.execute(
        "SELECT name, address, pid, version, extract(epoch FROM started),"
        " extract(epoch FROM last_seen), extract(epoch FROM now() - last_seen), every,"
        " stopped IS NOT NULL FROM nodes ORDER BY name"
    ).fetchall()
    out = []
    for name, address, pid, version, started, seen, age, every, was_stopped in rows:
        if was_stopped:
            state = NodeState.STOPPED
        elif float(age) > DOWN_AFTER * float(every):
            state = NodeState.DOWN
        else:
            state = NodeState.UP
        out.append(
            Node(
                str(name),
                str(address),
                int(pid),
                str(version),
                float(started),
                float(seen),
                float(age),
                float(every),
                state,
            )
        )
    return out


def live_nodes(conn: psycopg.Connection[Any]) -> list[str]:
    """The names of the nodes that beat lately and did not stop."""
    return [n.name for n in nodes(conn) if n.state is NodeState.UP]
