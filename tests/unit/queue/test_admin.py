"""The queue admin on a real queue store in tmp: list, show, hold, release, flush, delete,
bounce, stats, live (through the writer thread) and offline (a connection of its own)."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
from queue_fakes import commit_message, open_queue, parse_dsn, run

from hato.model import Address, RecipientDsn
from hato.queue import Queue, QueueError, RowUpdate, Status
from hato.queue.admin import (
    ADMIN_BOUNCE,
    Action,
    LiveAdmin,
    Selector,
    _cause,
    explain,
)
from hato.queue.offline import OfflineAdmin
from hato.queue.selector_sql import where
from kit.clock import FakeClock

TLS_REPLY = "451 4.7.5 TLS required by MTA-STS: certificate does not match"
DNS_REPLY = "451 4.4.3 Temporary DNS failure looking up the recipient domain"


async def defer_all(queue: Queue, clock: FakeClock, reply: str, *, delay: float = 600) -> None:
    """What the runner records after a 4xx: the lease is freed, the next try is later."""
    for pending in await queue.wait_fresh():
        updates = [
            RowUpdate(r.row_id, Status.QUEUED, 1, clock.now() + delay, reply)
            for r in pending.recipients
        ]
        await queue.record(pending.message.queue_id, updates)
        queue.release(pending.message.queue_id)


def rows(root: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(root / "queue.db") as conn:
        return conn.execute(
            "SELECT queue_id, address, status, next_attempt, last_reply FROM recipients"
            " ORDER BY row_id"
        ).fetchall()


def test_list_explains_why_each_recipient_is_still_queued(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        first = await commit_message(queue, to=("a@mta-sts.example",))
        await defer_all(queue, clock, TLS_REPLY)
        await commit_message(queue, to=("b@nodns.example",))
        await defer_all(queue, clock, DNS_REPLY, delay=120)
        fresh = await commit_message(queue, to=("c@example.org",))  # leased: in delivery
        listed = await admin.list(Selector())
        assert [r.recipient for r in listed] == [
            "a@mta-sts.example",
            "b@nodns.example",
            "c@example.org",
        ]
        assert (
            listed[0].why
            == f"blocked by the TLS policy: {TLS_REPLY}; 1 attempt(s), next try in 10 min"
        )
        assert listed[1].why.startswith(f"DNS lookup failed: {DNS_REPLY}; 1 attempt(s)")
        assert listed[1].why.endswith("next try in 2 min")
        assert listed[2].busy and listed[2].why == "being delivered now"
        only = await admin.list(Selector(domain="MTA-STS.example"))
        assert [r.queue_id for r in only] == [first]
        assert await admin.list(Selector(queue_id=fresh)) == [listed[2]]
        await queue.close()

    run(main)


def test_hold_release_flush_leave_rows_in_delivery_alone(tmp_path: Path) -> None:
    clock = FakeClock()
    woken: list[str] = []

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, woken.append)
        deferred = await commit_message(queue, to=("a@example.net", "b@example.net"))
        await defer_all(queue, clock, "451 4.3.0 try again")
        busy = await commit_message(queue, to=("c@example.net",))
        held = await admin.apply(Action.HOLD, Selector(domain="example.net"))
        assert (held.rows, held.messages, held.busy) == (2, (deferred,), 1)
        assert [r[2] for r in rows(tmp_path)] == ["held", "held", "queued"]
        # Held rows are not flushed; released rows are due at once.
        assert (await admin.apply(Action.FLUSH, Selector())).rows == 0
        clock.advance(5)
        released = await admin.apply(Action.RELEASE, Selector(queue_id=deferred))
        assert released.rows == 2
        assert [(r[2], r[3]) for r in rows(tmp_path)][:2] == [("queued", clock.now())] * 2
        clock.advance(5)
        assert (await admin.apply(Action.FLUSH, Selector(queue_id=busy))).busy == 1
        flushed = await admin.apply(Action.FLUSH, Selector())
        assert flushed.rows == 2 and rows(tmp_path)[0][3] == clock.now()
        assert any("event=admin-hold" in line and deferred in line for line in woken)
        await queue.close()

    run(main)


def test_delete_by_domain_removes_only_those_rows_and_then_the_message(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        big = b"Subject: big\r\n\r\n" + b"x" * 70_000 + b"\r\n"  # past 64 KiB: a spool file
        qid = await commit_message(queue, big, to=("a@spam.example", "b@example.org"))
        await defer_all(queue, clock, "451 4.3.0 later")
        body = tmp_path / "messages" / qid
        assert body.exists()
        first = await admin.apply(Action.DELETE, Selector(domain="spam.example"))
        assert (first.rows, first.removed) == (1, ())
        assert [r[1] for r in rows(tmp_path)] == ["b@example.org"]
        second = await admin.apply(Action.DELETE, Selector(queue_id=qid))
        assert second.removed == (qid,)
        assert rows(tmp_path) == [] and not body.exists()
        assert await admin.show(qid) is None
        await queue.close()

    run(main)


def dsn_rows(root: Path) -> list[tuple[object, ...]]:
    """The DSNs in the queue: messages from <>, their recipient, status and lease."""
    with sqlite3.connect(root / "queue.db") as conn:
        return conn.execute(
            "SELECT m.queue_id, r.address, r.status, r.lease_owner, m.body FROM messages m"
            " JOIN recipients r ON r.queue_id = m.queue_id WHERE m.mail_from = '<>'"
            " ORDER BY m.queue_id"
        ).fetchall()


def test_bounce_queues_a_dsn_to_the_sender_then_removes_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    logged: list[str] = []

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, logged.append, hostname="mx.hato.test")
        body = b"Subject: the figures\r\nMessage-ID: <m1@example.com>\r\n\r\nfigures\r\n"
        qid = await commit_message(queue, body, to=("a@example.net", "b@example.net"))
        null = await commit_message(queue, to=("c@example.net",), mail_from=None)
        await defer_all(queue, clock, "451 4.3.0 later")
        busy = await commit_message(queue, to=("d@example.net",))  # leased: being delivered
        by_sender = await admin.apply(Action.BOUNCE, Selector(sender="ALICE@example.com"))
        assert (by_sender.rows, by_sender.removed, by_sender.busy) == (2, (qid,), 1)
        assert qid not in [r[0] for r in rows(tmp_path)]
        assert busy in [r[0] for r in rows(tmp_path)]
        # One DSN for the message, from <> to its sender, handed to the runner like new mail.
        handed = await queue.wait_fresh()
        assert handed[0].message.queue_id == busy
        fresh = handed[-1]
        assert len(handed) == 2 and fresh.message.mail_from is None
        assert [str(r.address) for r in fresh.recipients] == ["alice@example.com"]
        assert fresh.message.body is not None
        dsn = parse_dsn(fresh.message.body)
        assert dsn.per_message["Reporting-MTA"] == "dns; mx.hato.test"
        assert dsn.per_message["X-Hato-Queue-ID"] == qid
        assert [b["Final-Recipient"] for b in dsn.recipients] == [
            "rfc822;a@example.net",
            "rfc822;b@example.net",
        ]
        assert {b["Action"] for b in dsn.recipients} == {"failed"}
        assert {b["Status"] for b in dsn.recipients} == {"5.0.0"}
        assert str(ADMIN_BOUNCE) in str(dsn.recipients[0]["Diagnostic-Code"])
        assert b"figures" in fresh.message.body  # RFC 3461 §4.3: the original comes back
        assert sum(line.startswith("event=admin-bounce") for line in logged) == 2
        # RFC 5321 §6.1: nothing is sent about a message from the null sender.
        nulls = await admin.apply(Action.BOUNCE, Selector(sender="<>", queue_id=null))
        assert nulls.removed == (null,) and len(dsn_rows(tmp_path)) == 1
        await queue.close()

    with caplog.at_level(logging.INFO, logger="hato.queue"):
        run(main)
    assert "event=dsn-queued" in caplog.text
    assert any("event=bounce-suppressed" in m and "null-sender" in m for m in caplog.messages)


def test_bounce_honours_notify_never(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        writer = queue.new_body()
        writer.write(b"Subject: x\r\n\r\nx\r\n")
        to = Address.parse("a@example.net")
        never = RecipientDsn.from_params({"NOTIFY": "NEVER"})
        qid = await queue.commit(
            writer, mail_from=to, recipients=[(to, to, never)], prefix=b"", params={}
        )
        await defer_all(queue, clock, "451 4.3.0 later")
        result = await admin.apply(Action.BOUNCE, Selector(queue_id=qid))
        # RFC 3461 §4.1: NOTIFY=NEVER: the recipient fails, and nobody is told.
        assert result.removed == (qid,) and dsn_rows(tmp_path) == []
        await queue.close()

    run(main)


def test_a_bounce_that_cannot_be_queued_leaves_the_message_in_the_queue(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        big = b"Subject: big\r\n\r\n" + b"x" * 70_000 + b"\r\n"
        qid = await commit_message(queue, big, to=("a@example.net",))
        await defer_all(queue, clock, "451 4.3.0 later")
        await queue.close()
        os.unlink(tmp_path / "messages" / qid)
        queue = await open_queue(tmp_path, clock)  # held: "body file missing"
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        result = await admin.apply(Action.BOUNCE, Selector(queue_id=qid))
        assert (result.rows, result.removed) == (0, ())
        (note,) = result.skipped
        assert note.startswith(f"{qid}: the bounce could not be queued (")
        # RFC 5321 §6.1: not reported, so not failed either: still held, and not claimed.
        (row,) = await admin.list(Selector())
        assert (row.status, row.busy) == ("held", False)
        assert dsn_rows(tmp_path) == []
        await queue.close()

    run(main)


def test_offline_bounce_queues_the_dsn_for_the_next_server(tmp_path: Path) -> None:
    clock = FakeClock()

    async def setup() -> str:
        queue = await open_queue(tmp_path, clock)
        qid = await commit_message(queue, to=("a@example.net",))
        await queue.close()  # left leased, as by a server that died
        return qid

    qid = run(setup)
    admin = OfflineAdmin(tmp_path, writable=True, log=lambda _: None, hostname="mx.hato.test")
    result = admin.apply(Action.BOUNCE, Selector(domain="example.net"), clock.now())
    admin.close()
    assert (result.rows, result.removed) == (1, (qid,))
    ((_, to, status, lease_owner, body),) = dsn_rows(tmp_path)
    # Due at once and leased to nobody: the next server delivers it.
    assert (to, status, lease_owner) == ("alice@example.com", "queued", None)
    assert isinstance(body, bytes)
    assert parse_dsn(body).per_message["X-Hato-Queue-ID"] == qid


def test_show_gives_envelope_headers_and_every_recipient(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        queue = await open_queue(tmp_path, clock)
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        body = b"Subject: hello\r\nTo: a@example.net\r\n\r\nsecret body text\r\n"
        qid = await commit_message(queue, body, to=("a@example.net",))
        await defer_all(queue, clock, TLS_REPLY)
        detail = await admin.show(qid)
        assert detail is not None
        assert detail.sender == "<alice@example.com>" and detail.body == "inline"
        assert detail.params == {"BODY": "8BITMIME"}
        assert detail.headers == "Received: by test\r\nSubject: hello\r\nTo: a@example.net\r\n"
        assert "secret" not in detail.headers
        (rcpt,) = detail.recipients
        assert rcpt.last_reply == TLS_REPLY and "TLS policy" in rcpt.why
        stats = await admin.stats()
        assert (stats.messages, stats.queued, stats.deferred, stats.held) == (1, 1, 1, 0)
        assert stats.oldest == clock.now()
        await queue.close()

    run(main)


def test_offline_read_only_and_writable(tmp_path: Path) -> None:
    clock = FakeClock()

    async def setup() -> str:
        queue = await open_queue(tmp_path, clock)
        qid = await commit_message(queue, to=("a@example.net",))
        await commit_message(queue, to=("b@example.net",))  # left leased: the server "died"
        await defer_all(queue, clock, "451 4.3.0 later")
        await queue.close()
        return qid

    qid = run(setup)
    reader = OfflineAdmin(tmp_path, writable=False, log=lambda _: None)
    listed = reader.list(Selector(), clock.now())
    # Offline no lease is live: nobody is delivering anything.
    assert [r.busy for r in listed] == [False, False]
    with pytest.raises(QueueError, match="readonly"):
        reader.apply(Action.HOLD, Selector(queue_id=qid), clock.now())
    reader.close()
    writer = OfflineAdmin(tmp_path, writable=True, log=lambda _: None)
    assert writer.apply(Action.HOLD, Selector(), clock.now()).rows == 2
    writer.close()
    assert [r[2] for r in rows(tmp_path)] == ["held", "held"]
    with pytest.raises(FileNotFoundError):
        OfflineAdmin(tmp_path / "nowhere", writable=False, log=lambda _: None)


def test_release_keeps_a_message_whose_body_is_missing_held(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> str:
        queue = await open_queue(tmp_path, clock)
        big = b"Subject: big\r\n\r\n" + b"x" * 70_000 + b"\r\n"
        qid = await commit_message(queue, big, to=("a@example.net",))
        await defer_all(queue, clock, "451 4.3.0 later")
        await queue.close()
        os.unlink(tmp_path / "messages" / qid)
        queue = await open_queue(tmp_path, clock)  # recovery holds it: "body file missing"
        admin = LiveAdmin(queue, clock.now, lambda _: None)
        (row,) = await admin.list(Selector())
        assert row.status == "held" and "body file is missing" in row.why
        result = await admin.apply(Action.RELEASE, Selector())
        assert result.rows == 0 and result.skipped == (
            f"{qid}: body file still missing, left held",
        )
        await queue.close()
        return qid

    run(main)


def test_domain_selector_is_not_a_pattern() -> None:
    condition, args = where(Selector(domain="ex_mple.%"))
    assert args == ["%@ex\\_mple.\\%"] and "ESCAPE" in condition


def test_selector_sql_takes_the_drivers_placeholder() -> None:
    selector = Selector(queue_id="Q1", domain="example.org", sender="a@example.org")
    sqlite, sqlite_args = where(selector)
    postgres, postgres_args = where(selector, "%s")
    assert sqlite.count("?") == 3 and "%s" not in sqlite
    assert postgres.count("%s") == 3 and "?" not in postgres
    assert sqlite_args == postgres_args == ["Q1", "%@example.org", "<a@example.org>"]


def test_explain_states() -> None:
    from hato.queue.admin import RowView

    base = RowView("Q", 0.0, 1, "<a@b>", 1, "r@x", "r@x", "queued", 0, 100.0, None, False)
    assert explain(base, 40.0) == "not tried yet; due in 60s"
    held = RowView("Q", 0.0, 1, "<a@b>", 1, "r@x", "r@x", "held", 2, 0.0, "451 x", False)
    assert explain(held, 0.0).startswith("held by the administrator")
    refused = RowView(
        "Q", 0, 1, "<a@b>", 1, "r@x", "r@x", "queued", 3, 7200.0, "421 4.4.1 no", False
    )
    assert explain(refused, 0.0) == (
        "could not connect to the receiving server: 421 4.4.1 no; 3 attempt(s), next try in 2.0 h"
    )


def test_a_broken_handshake_is_told_apart_from_a_tls_policy() -> None:

    reply = "421 4.7.5 TLS handshake failed: certificate verify failed: certificate has expired"
    assert _cause(reply) == f"TLS with the receiving server failed: {reply}"
    assert _cause(TLS_REPLY).startswith("blocked by the TLS policy: ")
