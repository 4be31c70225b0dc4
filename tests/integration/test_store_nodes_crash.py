"""Three `hato serve` nodes (127.0.0.2, .3, .4) on one private PostgreSQL and one shared Maildir
tree, under Postfix's smtp-source load on all three: one node is SIGKILLed mid-run while it
holds leased rows and started again later, another is stopped for good. Every message that got
250 is delivered exactly once (by queue id in the Maildir file name, and by Message-ID), and
the rows the killed node held are delivered by a surviving node within the lease time
([store] lease_time = 5 s here)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest
from peers.hato import HatoServer
from peers.maildir import all_messages
from peers.postgres import PASSWORD, PostgresServer
from peers.server import DomainSetup, MailSetup

from hato.pgstore import migrate

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
LEASE = 5.0
# What "within the lease time" may take on a loaded 2-core machine: the lease itself, then a
# scan of the surviving node (which sleeps until that lease runs out) and its delivery.
LEASE_BOUND = LEASE + 25.0
PER_NODE = 150  # messages smtp-source sends to each node
_QUEUED = re.compile(r"<<< 250 \S+ Ok: queued as (\S+)")
_FILE_ID = re.compile(r"\.M\d+Q([0-9A-Z]+)R\d+\.")
_MESSAGE_ID = re.compile(rb"^Message-Id: *(\S+)", re.MULTILINE | re.IGNORECASE)


@pytest.fixture
def cluster(
    workdir: Path, pg_dsn: str, postgres: PostgresServer
) -> Iterator[tuple[list[HatoServer], str]]:
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
    setup = MailSetup(
        domains=(DomainSetup("example.org", accept_any=True),),
        store=(pg_dsn, postgres.password_file),
        mailboxes=workdir / "mailboxes",
        direct_local_delivery=False,  # through the shared queue
        lease_time=LEASE,
    )
    nodes = [HatoServer(workdir / f"node{n}", setup, host=host) for n, host in enumerate(HOSTS)]
    try:
        for node in nodes:
            node.start()
        yield nodes, pg_dsn
    finally:
        for node in nodes:
            if node.alive():
                node.stop()


def _lease_owner(node: HatoServer) -> str:
    return f"{socket.gethostname()}:{node.data_dir}"  # boot/store.py names a node so


def _leased_to(dsn: str, owner: str) -> set[str]:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT queue_id FROM queue_recipients"
            " WHERE status = 'queued' AND lease_owner = %s",
            (owner,),
        ).fetchall()
    return {queue_id for (queue_id,) in rows}


def _rows(dsn: str, queue_ids: set[str]) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        return conn.execute(
            "SELECT queue_id, status, lease_owner, lease_until, next_attempt, attempts,"
            " last_reply FROM queue_recipients WHERE queue_id = ANY(%s)",
            (list(queue_ids),),
        ).fetchall()


def _queued(dsn: str) -> int:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM queue_recipients WHERE status = 'queued'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _source(
    smtp_source: str, node: HatoServer, out: IO[bytes], count: int
) -> subprocess.Popen[bytes]:
    """smtp-source, verbose (each reply logged: the queue ids that got 250 are read from it)."""
    return subprocess.Popen(
        [
            *(smtp_source, "-v", "-s", "4", "-m", str(count), "-l", "2048"),
            *("-f", "source@client.test", "-t", "bob@example.org", f"{node.host}:{node.port}"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _accepted(path: Path) -> set[str]:
    return set(_QUEUED.findall(path.read_text(errors="replace")))


def _delivered(base: Path) -> Counter[str]:
    """Queue ids in the delivered files' names (one recipient per message: one file each)."""
    return Counter(m.group(1) for p in all_messages(base) if (m := _FILE_ID.search(p.name)))


def _until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_killed_and_stopped_nodes_lose_nothing_and_deliver_nothing_twice(
    cluster: tuple[list[HatoServer], str], workdir: Path, require_peer: Callable[[str], str]
) -> None:
    nodes, dsn = cluster
    smtp_source = require_peer("smtp-source")
    survivor, killed, stopped = nodes
    mailboxes = workdir / "mailboxes"
    outputs = [workdir / f"source{n}.log" for n in range(3)]
    files = [path.open("wb") for path in outputs]
    sources = [
        _source(smtp_source, node, f, PER_NODE) for node, f in zip(nodes, files, strict=True)
    ]
    try:
        _until(lambda: len(_accepted(outputs[1])) >= 20, 120, "no load on the node to kill")
        # Freeze the node, and kill it only when it holds leased rows (else let it go on): a
        # crash that strands mail, not one between two messages.
        assert killed.proc is not None
        held: set[str] = set()
        deadline = time.monotonic() + 120
        while not held:
            assert time.monotonic() < deadline, "the node never held a lease under load"
            assert sources[1].poll() is None, "the load on the node to kill ended early"
            os.kill(killed.proc.pid, signal.SIGSTOP)
            held = _leased_to(dsn, _lease_owner(killed))
            if not held:
                os.kill(killed.proc.pid, signal.SIGCONT)
                time.sleep(0.02)
        killed.kill()
        killed_at = time.monotonic()
        stopped.stop()  # for good: SIGTERM, its sessions end with 421
        # The killed node's rows go to the survivor once their lease runs out.
        try:
            _until(lambda: held <= _delivered(mailboxes).keys(), LEASE_BOUND, "")
        except AssertionError:
            rows = _rows(dsn, held - _delivered(mailboxes).keys())
            raise AssertionError(
                f"rows leased by the killed node not delivered in {LEASE_BOUND:g} s: {rows}"
                f"\n{survivor.log_text()[-3000:]}"
            ) from None
        assert time.monotonic() - killed_at < LEASE_BOUND
        for queue_id in held:
            assert survivor.wait_for_log(rf"event=delivered id={queue_id}\b", timeout=60), queue_id
        assert sources[0].wait(timeout=300) == 0, outputs[0].read_text()[-2000:]
        for source in sources[1:]:
            source.wait(timeout=60)  # ended by the kill and the stop (non-zero)
        # Started again later: it frees what it still held and takes mail as before.
        killed.start()
        extra = workdir / "source-after.log"
        with extra.open("wb") as out:
            assert _source(smtp_source, killed, out, 20).wait(timeout=120) == 0
        outputs.append(extra)
    finally:
        for source in sources:
            if source.poll() is None:
                source.kill()
                source.wait()
        for f in files:
            f.close()
    accepted = set().union(*(_accepted(path) for path in outputs))
    assert len(accepted) >= PER_NODE + 20
    _until(lambda: _queued(dsn) == 0, 120, "rows still queued")
    _until(lambda: accepted <= _delivered(mailboxes).keys(), 60, "accepted mail missing")
    delivered = _delivered(mailboxes)
    assert not [q for q, n in delivered.items() if n > 1]  # one file per queue id
    ids = Counter(
        m.group(1) for p in all_messages(mailboxes) if (m := _MESSAGE_ID.search(p.read_bytes()))
    )
    assert sum(ids.values()) == len(delivered)
    assert not [m for m, n in ids.items() if n > 1], "a Message-ID delivered twice"
