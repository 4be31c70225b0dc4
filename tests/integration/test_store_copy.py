"""`hato store copy`: an installation on SQLite (queued mail with small and large bodies, an
account, a key, report data) copied into a private PostgreSQL, then `hato serve` on PostgreSQL
delivers the queued mail and the user logs in; copied back into a fresh data directory, the
queue and the accounts are what they were; each copy run twice adds nothing; refused while a
server holds the data directory."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fcntl
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from peers.clients import auth_plain, submissions_session
from peers.hato import HatoServer
from peers.maildir import MARKER_HEADER, assert_each_once
from peers.postgres import PASSWORD, PostgresServer
from peers.server import DomainSetup, MailSetup, submission_setup
from peers.tls import TestCA

from hato.crypto import KeyStore
from hato.crypto.keys import KeyKind, PublicKey
from hato.model import Address, SystemClock
from hato.queue import Queue
from hato.reports import DkimAuth, DmarcEvent, PolicyPublished, SqliteReportStore

ALICE = Address("alice", "users.test")
# The copied key row is no certificate: not alice's, whose queued mail the node would then
# encrypt to it before delivery (intake/rekey.py) and, failing, keep waiting.
CAROL = Address("carol", "users.test")
SIZES = {"small": 2_000, "file": 200_000, "chunks": 2_500_000}  # inline; one chunk; three
DMARC = DmarcEvent(
    time=1_800_000_000.0,
    source_ip="192.0.2.1",
    header_from="sender.test",
    envelope_from="",
    spf_domain="sender.test",
    spf_result="pass",
    dkim=(DkimAuth("sender.test", "s1", "pass"),),
    dkim_aligned=True,
    spf_aligned=True,
    disposition="none",
    reason="",
    policy=PolicyPublished("sender.test", "none", "none", 100, "r", "r", "0"),
)


def _body(marker: str, size: int) -> bytes:
    head = MARKER_HEADER + f": {marker}\r\nSubject: {marker}\r\n\r\n".encode()
    line = b"x" * 70 + b"\r\n"
    return head + line * (size // len(line))


async def _queue_mail(root: Path) -> None:
    """Mail as a SQLite server leaves it: committed and leased (it was about to deliver)."""
    queue = await Queue.open(root, clock=SystemClock(), node_id="old-node", min_free=0)
    try:
        for marker, size in SIZES.items():
            writer = queue.new_body()
            writer.write(_body(marker, size))
            to = [(ALICE, ALICE)]
            await queue.commit(
                writer, mail_from=Address("bob", "example.net"), recipients=to, prefix=b"",
                params={},
            )  # fmt: skip
    finally:
        await queue.close()


def _queue_rows(data_dir: Path) -> tuple[list[tuple[object, ...]], dict[str, bytes]]:
    """The queue's rows (leases aside) and each message's body, for comparing two stores."""
    root = data_dir / "queue"
    with sqlite3.connect(root / "queue.db") as db:
        rows = db.execute(
            "SELECT r.row_id, r.queue_id, r.address, r.status, m.mail_from, m.size"
            " FROM recipients r JOIN messages m USING (queue_id) ORDER BY r.row_id"
        ).fetchall()
        bodies = {}
        for queue_id, inline in db.execute("SELECT queue_id, body FROM messages"):
            path = root / "messages" / queue_id
            bodies[queue_id] = inline if inline is not None else path.read_bytes()
    return rows, bodies


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _copy(node: HatoServer, *args: str) -> str:
    done = node.hato("store", "copy", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    source, target = args[args.index("--from") + 1], args[args.index("--to") + 1]
    assert f"event=admin-store-copy source={source} target={target} problems=0 " in done.stderr
    return done.stdout


def test_copy_sqlite_to_postgresql_and_back(
    workdir: Path, pg_dsn: str, postgres: PostgresServer, test_ca: TestCA
) -> None:
    tls = submission_setup(test_ca.tls_files()).tls
    setup = MailSetup(
        domains=(DomainSetup("users.test", users=("alice",)),),
        submission=True,
        tls=tls,
        max_message_size=4 * 1024 * 1024,
    )
    node = HatoServer(workdir / "a", setup)
    node.start()  # an installation on SQLite: alice's account made, the server run once
    node.stop()
    asyncio.run(_queue_mail(node.data_dir / "queue"))
    keys = KeyStore(node.data_dir / "keys.db")
    keys.put(PublicKey(KeyKind.OPENPGP, CAROL, b"\x01\x02", "0102", None, "ed25519"),
             dt.datetime(2026, 1, 2, tzinfo=dt.UTC))  # fmt: skip
    keys.close()
    reports = SqliteReportStore(node.data_dir / "reports.db")
    reports.record_dmarc(DMARC)
    reports.close()
    before = _queue_rows(node.data_dir)

    # The same installation, now configured for PostgreSQL.
    node.setup = dataclasses.replace(setup, store=(pg_dsn, postgres.password_file))
    node.config.write_text(node.config_text(), encoding="utf-8")
    assert node.hato("store", "migrate").returncode == 0
    with open(node.data_dir / "hato.lock", "a+") as lock:  # as a running server holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = node.hato("store", "copy", "--from", "sqlite", "--to", "postgresql")
    assert refused.returncode == 75, refused.stderr
    assert "is in use by a running hato server; stop it first" in refused.stderr
    assert _count(pg_dsn, "queue_messages") == 0

    first = _copy(node, "--from", "sqlite", "--to", "postgresql")
    assert "queue: 3 messages (3 recipients) copied, 0 already there" in first, first
    assert "accounts: 1 copied, 0 already there" in first, first
    assert "keys: 1 copied" in first and "dmarc report data: 1 copied" in first, first
    again = _copy(node, "--from", "sqlite", "--to", "postgresql")
    assert "queue: 0 messages (0 recipients) copied, 3 already there" in again, again
    assert "accounts: 0 copied, 1 already there" in again, again
    counts = {t: _count(pg_dsn, t) for t in ("queue_messages", "queue_recipients",
              "queue_body_chunks", "users", "keys", "report_dmarc")}  # fmt: skip
    assert counts == {"queue_messages": 3, "queue_recipients": 3, "queue_body_chunks": 4,
                      "users": 1, "keys": 1, "report_dmarc": 1}  # fmt: skip

    # Back into a fresh data directory: the same queue (row ids, bodies), the same account.
    back = HatoServer(workdir / "b", node.setup)
    back.work.mkdir(parents=True)
    back.config.write_text(back.config_text(), encoding="utf-8")
    for _ in range(2):
        out = _copy(back, "--from", "postgresql", "--to", "sqlite", "--init")
    assert "queue: 0 messages (0 recipients) copied, 3 already there" in out, out
    assert _queue_rows(back.data_dir) == before
    with sqlite3.connect(back.data_dir / "users.db") as db:
        assert db.execute("SELECT address FROM users").fetchall() == [("alice@users.test",)]

    # `hato serve` on PostgreSQL delivers the mail queued on SQLite, and alice logs in.
    node.start()
    try:
        assert_each_once(node.mailboxes(), set(SIZES), set(SIZES), timeout=60, settle=0.5)
        with submissions_session(node, test_ca) as session:
            assert auth_plain(session, "alice@users.test")[0] == 235
        # From PostgreSQL, refused while a node runs on it (its heartbeat is recent).
        deadline = time.monotonic() + 30
        while " up " not in node.hato("status").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        busy = back.hato("store", "copy", "--from", "postgresql", "--to", "sqlite")
        assert busy.returncode == 75, busy.stdout + busy.stderr
        assert "run on the PostgreSQL store (heartbeat seen lately); stop every node" in busy.stderr
    finally:
        node.stop()
    assert _count(pg_dsn, "queue_messages") == 0


def test_a_copy_cut_short_is_finished_by_running_it_again(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hato.pgstore import migrate
    from hato.queue import copy as queuecopy

    asyncio.run(_queue_mail(tmp_path / "queue"))
    copy_one = queuecopy._to_pg
    calls = []

    def crash_at_the_second(*args: Any) -> None:
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the admin's ^C, or the machine going down
        copy_one(*args)

    monkeypatch.setattr(queuecopy, "PAGE", 1)  # one message per transaction
    monkeypatch.setattr(queuecopy, "_to_pg", crash_at_the_second)
    with psycopg.connect(pg_dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)
        with pytest.raises(KeyboardInterrupt):
            queuecopy.sqlite_to_pg(tmp_path / "queue", conn)
        assert _count(pg_dsn, "queue_messages") == 1  # the first page only, whole
        monkeypatch.setattr(queuecopy, "_to_pg", copy_one)
        done = queuecopy.sqlite_to_pg(tmp_path / "queue", conn)
    assert (done.messages, done.already) == (2, 1)
    assert (_count(pg_dsn, "queue_messages"), _count(pg_dsn, "queue_recipients")) == (3, 3)
    assert _count(pg_dsn, "queue_body_chunks") == 4
