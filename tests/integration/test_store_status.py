"""Cluster-wide `hato status` on PostgreSQL: two `hato serve` nodes (127.0.0.2 and .4) write
heartbeats; `hato status` on either lists both with their last heartbeat, the database
(reachable, schema version) and the whole shared queue; a node killed is shown down after
three of its heartbeat intervals, one stopped cleanly as stopped; with the database down,
`hato status` says it is unreachable."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.hato import HatoServer
from peers.nodes import alpha_and_beta, plain_node
from peers.postgres import PASSWORD, PostgresServer

from hato.pgstore import SCHEMA_VERSION


@pytest.fixture
def nodes(workdir: Path, pg_dsn: str, postgres: PostgresServer) -> Iterator[list[HatoServer]]:
    pw = postgres.password_file
    with alpha_and_beta(workdir, pg_dsn, pw, "example.org", plain_node, heartbeat=0.5) as nodes:
        yield nodes


def _status_until(node: HatoServer, pattern: str, timeout: float = 60) -> str:
    """`hato status` until its output matches `pattern` (the heartbeats are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        out = node.hato("status").stdout
        if re.search(pattern, out, re.MULTILINE) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _hold_one(dsn: str) -> None:
    """A held message in the shared queue, as any node would have committed it."""
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO queue_messages (queue_id, mail_from, received_at, size, prefix, params,"
            " body) VALUES ('held1', 'a@example.net', %s, 6, '', '{}', 'hello\n')",
            (time.time(),),
        )
        conn.execute(
            "INSERT INTO queue_recipients (queue_id, address, original, status, next_attempt,"
            " updated_at) VALUES ('held1', 'bob@example.org', 'bob@example.org', 'held', 0, 0)"
        )


def test_status_on_any_node_lists_the_cluster(
    nodes: list[HatoServer], postgres: PostgresServer, pg_dsn: str
) -> None:
    alpha, beta = nodes
    _hold_one(pg_dsn)
    both = r"^node: +alpha +up .*\n^node: +beta +up "
    out = _status_until(beta, both)
    assert re.search(both, out, re.MULTILINE), out
    assert f"database:   reachable, schema version {SCHEMA_VERSION}" in out, out
    assert "127.0.0.2:" in out and "127.0.0.4:" in out, out
    assert "queue:      1 message(s), 0 KiB" in out and "1 held (the whole cluster)" in out, out

    beta.kill()  # no clean stop: its heartbeats just end
    out = _status_until(alpha, r"^node: +beta +DOWN ")
    assert re.search(r"^node: +beta +DOWN ", out, re.MULTILINE), out
    assert "WARNING:    node beta is down: no heartbeat for" in out, out
    assert re.search(r"^node: +alpha +up ", out, re.MULTILINE), out

    alpha.stop()
    out = alpha.hato("status").stdout
    assert re.search(r"^node: +alpha +stopped ", out, re.MULTILINE), out

    postgres.stop()
    try:
        down = alpha.hato("status")
    finally:
        postgres.start()
    assert down.returncode == 1
    assert "database:   UNREACHABLE: " in down.stdout, down.stdout
    assert "WARNING:    the PostgreSQL store is unreachable" in down.stdout, down.stdout
