"""Three `hato serve` nodes (127.0.0.2, .3, .4) on one private PostgreSQL and one shared Maildir
tree, local delivery through the shared queue: every message that got 250 on any node is
delivered exactly once; while PostgreSQL is down every node answers 451 4.3.0 (never 250), and
once it is back they accept and deliver again with no restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from peers.hato import HatoServer
from peers.maildir import all_messages, assert_each_once, markers
from peers.nodes import running_nodes, send_marked
from peers.postgres import PASSWORD, PostgresServer
from peers.server import DomainSetup, MailSetup

from hato.pgstore import migrate

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def nodes(workdir: Path, pg_dsn: str, postgres: PostgresServer) -> Iterator[list[HatoServer]]:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    setup = MailSetup(
        domains=(DomainSetup("example.org", accept_any=True),),
        store=(pg_dsn, postgres.password_file),
        mailboxes=workdir / "mailboxes",
        direct_local_delivery=False,  # through the shared queue
    )
    with running_nodes(workdir, setup, HOSTS) as started:
        yield started


def test_every_node_delivers_from_the_shared_queue_exactly_once(
    nodes: list[HatoServer], workdir: Path
) -> None:
    accepted, attempted = set(), set()
    for n in range(30):
        marker = f"m{n}"
        attempted.add(marker)
        code, line = send_marked(nodes[n % 3], marker)
        assert code == 250, line
        accepted.add(marker)
    assert_each_once(workdir / "mailboxes", accepted, attempted, timeout=60, settle=1.0)


def test_postgresql_down_means_451_and_nothing_lost(
    nodes: list[HatoServer], workdir: Path, postgres: PostgresServer
) -> None:
    accepted, attempted = set(), set()
    for n in range(3):
        attempted.add(f"before{n}")
        assert send_marked(nodes[n], f"before{n}")[0] == 250
        accepted.add(f"before{n}")
    postgres.stop()
    try:
        for n, node in enumerate(nodes):
            attempted.add(f"down{n}")
            code, line = send_marked(node, f"down{n}")
            # RFC 5321 §4.2.5 451, RFC 3463 X.3.0: a temporary local problem, never 250.
            assert (code, line[4:9]) == (451, b"4.3.0"), (line, node.log_text()[-4000:])
    finally:
        postgres.start()
    # What was delivered while the database was down is recorded at the runners' next scan
    # (at most a minute later: queue/runner.py max_sleep), not delivered again.
    # No restart: the pools reconnect. A node whose pool is between two reconnect attempts
    # still answers 451 for a moment (pgstore/pool.py RECONNECT_TIMEOUT), which a client
    # retries, as it would any 4xx (RFC 5321 §4.5.4.1).
    resume_by = time.monotonic() + 60
    for n, node in enumerate(nodes):
        attempted.add(f"after{n}")
        while (reply := send_marked(node, f"after{n}"))[0] != 250:
            code, line = reply
            assert (code, line[4:9]) == (451, b"4.3.0"), line
            assert time.monotonic() < resume_by, "the node did not resume after PostgreSQL"
            time.sleep(0.5)
        accepted.add(f"after{n}")
    # A delivery tried while the database was down was deferred by the usual schedule (its
    # outcome written at that node's next scan, up to a minute later): after an outage the
    # admin flushes the queue, as with Postfix's `postqueue -f`. Flush until everything
    # accepted is in, then check each exactly once.
    deadline = time.monotonic() + 150
    while not accepted <= markers(all_messages(workdir / "mailboxes")).keys():
        assert time.monotonic() < deadline, "accepted mail not delivered after flushes"
        for node in nodes:
            node.hato("queue", "flush")
        for _ in range(50):
            if accepted <= markers(all_messages(workdir / "mailboxes")).keys():
                break
            time.sleep(0.1)
    assert_each_once(workdir / "mailboxes", accepted, attempted, timeout=60, settle=1.0)
