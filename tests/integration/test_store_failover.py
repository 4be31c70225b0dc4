"""A failover of the shared PostgreSQL to a promoted streaming replica, survived with no restart.

Two `hato serve` nodes (127.0.0.2, .3) whose DSN lists two servers with
`target_session_attrs=read-write`: a private primary, and a replica of it made with
`pg_basebackup -R` (both on loopback, on ports of their own). The primary is stopped: every
node answers 451 4.3.0 (the replica refuses writes, so libpq finds no read-write server), never
250. The replica is promoted (`pg_ctl promote`): every node takes mail again, with no restart,
its queue's LISTEN connection comes back on the new primary, and everything that got 250,
before and after, is delivered exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.hato import HatoServer
from peers.maildir import all_messages, assert_each_once, markers
from peers.net import LOOPBACK
from peers.nodes import running_nodes, send_marked
from peers.postgres import PASSWORD, USER, PostgresServer
from peers.server import DomainSetup, MailSetup

from hato.pgstore import migrate

HOSTS = ("127.0.0.2", "127.0.0.3")
RESUME = 60.0  # seconds the nodes may take to find the new primary (pool and LISTEN backoff)


@pytest.fixture
def servers(workdir: Path, postgres: PostgresServer) -> Iterator[tuple[PostgresServer, ...]]:
    """A private primary and its streaming replica (the session's server gives the binaries)."""
    primary = PostgresServer(workdir / "pg-primary", postgres.bindir)
    started = [primary]
    try:
        primary.start()
        dsn = primary.create_database("hato")
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            migrate(conn)
        replica = primary.replica(workdir / "pg-replica")
        started.append(replica)
        replica.start()
        yield primary, replica
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def nodes(workdir: Path, servers: tuple[PostgresServer, ...]) -> Iterator[list[HatoServer]]:
    primary, replica = servers
    dsn = (
        f"host={LOOPBACK},{LOOPBACK} port={primary.port},{replica.port} user={USER}"
        " dbname=hato target_session_attrs=read-write"
    )
    setup = MailSetup(
        domains=(DomainSetup("example.org", accept_any=True),),
        store=(dsn, primary.password_file),
        mailboxes=workdir / "mailboxes",
        direct_local_delivery=False,
        lease_time=20.0,  # the runners scan at least every 5 s: failed records are retried soon
    )
    with running_nodes(workdir, setup, HOSTS) as started:
        yield started


def _temporary(code: int, line: bytes) -> bool:
    # RFC 5321 §4.2.5 451, RFC 3463 X.3.0: a temporary local problem.
    return (code, line[4:9]) == (451, b"4.3.0")


def test_failover_to_a_promoted_replica_needs_no_restart(
    nodes: list[HatoServer], servers: tuple[PostgresServer, ...], workdir: Path
) -> None:
    primary, replica = servers
    accepted, attempted = set(), set()
    for n, node in enumerate(nodes):
        attempted.add(f"before{n}")
        code, line = send_marked(node, f"before{n}")
        assert code == 250, line
        accepted.add(f"before{n}")
    primary.stop()
    for n, node in enumerate(nodes):
        attempted.add(f"down{n}")
        code, line = send_marked(node, f"down{n}")
        assert _temporary(code, line), (line, node.log_text()[-3000:])
    replica.promote()
    for n, node in enumerate(nodes):
        # Until the node's pools have a connection to the new primary: 451, never anything else.
        deadline = time.monotonic() + RESUME
        tries = 0
        while True:
            marker = f"after{n}.{tries}"
            attempted.add(marker)
            code, line = send_marked(node, marker)
            if code == 250:
                accepted.add(marker)
                break
            assert _temporary(code, line), line
            assert time.monotonic() < deadline, (line, node.log_text()[-3000:])
            tries += 1
            time.sleep(0.5)
    deadline = time.monotonic() + RESUME
    for node in nodes:  # the LISTEN connection too: once at start, once on the new primary
        while node.log_text().count("event=queue-listening") < 2:
            assert time.monotonic() < deadline, node.log_text()[-3000:]
            time.sleep(0.1)
    # A delivery tried while no primary answered was deferred by the usual schedule (as in
    # test_store_nodes.py): after the outage the admin flushes the queue (`postqueue -f`).
    deadline = time.monotonic() + 120
    while not accepted <= markers(all_messages(workdir / "mailboxes")).keys():
        assert time.monotonic() < deadline, "accepted mail not delivered after flushes"
        for node in nodes:
            node.hato("queue", "flush")
        for _ in range(50):
            if accepted <= markers(all_messages(workdir / "mailboxes")).keys():
                break
            time.sleep(0.1)
    try:
        assert_each_once(workdir / "mailboxes", accepted, attempted, timeout=90, settle=1.0)
    except AssertionError as exc:
        found = markers(all_messages(workdir / "mailboxes"))
        with psycopg.connect(replica.dsn_of("hato"), password=PASSWORD) as conn:
            rows = conn.execute(
                "SELECT r.queue_id, status, lease_owner, lease_until, next_attempt, attempts,"
                " last_reply FROM queue_recipients r"
            ).fetchall()
        logs = "\n".join(node.log_text()[-6000:] for node in nodes)
        missing = accepted - found.keys()
        raise AssertionError(f"{exc}: missing {missing}, rows {rows}\n{logs}") from None
