"""Recording for the reports: the mx check counts one DMARC event per From domain that has a
record (with what we did to the message), the store folds equal events of an hour into one
row, and a store that cannot write never fails the message."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from dnsserver import FakeResolver
from hato.intake.inbound import Enforcement, InboundChecker
from hato.model import Address
from hato.model.dns import RdType
from hato.reports import (
    DkimAuth,
    DmarcEvent,
    PolicyPublished,
    PolicyType,
    SqliteReportStore,
    TlsEvent,
    TlsFailure,
)
from kit.clock import FakeClock

NOW = 1_700_000_000.0


def _event(ip: str = "192.0.2.1", count: int = 1, time: float = NOW) -> DmarcEvent:
    return DmarcEvent(
        time=time,
        source_ip=ip,
        header_from="sender.test",
        envelope_from="sender.test",
        spf_domain="sender.test",
        spf_result="fail",
        dkim=(DkimAuth("sender.test", "s1", "fail"),),
        dkim_aligned=False,
        spf_aligned=False,
        disposition="reject",
        reason="",
        policy=PolicyPublished("sender.test", "reject", "reject", 100, "r", "r"),
        count=count,
    )


def test_equal_events_of_one_hour_are_one_row_with_a_count(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    for _ in range(3):
        store.record_dmarc(_event())
    store.record_dmarc(_event(ip="198.51.100.7"))
    store.record_dmarc(_event(time=NOW + 7200))  # another hour: another row
    events = store.dmarc_events(0, NOW + 86400)
    assert sorted((e.source_ip, e.count) for e in events) == [
        ("192.0.2.1", 4),
        ("198.51.100.7", 1),
    ]
    assert events[0].dkim == (DkimAuth("sender.test", "s1", "fail"),)
    assert (tmp_path / "reports.db").stat().st_mode & 0o777 == 0o600
    assert store.prune(NOW + 86400) == 3
    assert store.dmarc_events(0, NOW + 86400) == []


def test_tls_events_and_the_last_report_are_kept(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    strings = ("version: STSv1", "mode: enforce")
    failure = TlsFailure.STARTTLS_NOT_SUPPORTED
    failed = TlsEvent(NOW, "rcpt.test", PolicyType.STS, strings, "mx.rcpt.test", "192.0.2.9",
                      failure, "no TLS")  # fmt: skip
    store.record_tls(failed)
    store.record_tls(failed)
    (event,) = store.tls_events(0, NOW + 3600)
    assert event.failure is TlsFailure.STARTTLS_NOT_SUPPORTED and event.count == 2
    assert event.policy_strings == ("version: STSv1", "mode: enforce")
    assert store.last_sent("dmarc") is None
    store.mark_sent("dmarc", NOW)
    assert store.last_sent("dmarc") == NOW


def test_a_store_that_cannot_write_logs_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteReportStore(tmp_path / "reports.db", busy_timeout=0.05)
    locker = sqlite3.connect(tmp_path / "reports.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    store.record_dmarc(_event())  # in memory: never waits, never raises
    store.flush()  # must not raise either
    locker.execute("ROLLBACK")
    assert "event=report-record-failed events=1" in caplog.text
    store.record_dmarc(_event())
    assert [e.count for e in store.dmarc_events(0, NOW + 3600)] == [1]  # the batch was dropped


def test_the_server_store_flushes_by_itself_and_at_close(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db", flush_seconds=0.01)
    store.record_dmarc(_event())
    reader = SqliteReportStore(tmp_path / "reports.db")
    deadline = time.monotonic() + 10
    while not reader.dmarc_events(0, NOW + 3600) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the flusher thread's write, bounded
    assert [e.count for e in reader.dmarc_events(0, NOW + 3600)] == [1]
    store.record_dmarc(_event())
    store.close()  # writes what is left
    assert [e.count for e in reader.dmarc_events(0, NOW + 3600)] == [2]


MESSAGE = b"From: <news@sender.test>\r\nSubject: hi\r\n\r\nhello\r\n"


def _checker(store: SqliteReportStore, enforcement: Enforcement) -> InboundChecker:
    resolver = FakeResolver(
        {
            ("_dmarc.sender.test", RdType.TXT): ["v=DMARC1; p=reject; rua=mailto:d@sender.test"],
            ("sender.test", RdType.TXT): ["v=spf1 ip4:203.0.113.5 -all"],
            ("_dmarc.plain.test", RdType.TXT): [],
        }
    )
    return InboundChecker(
        resolver,
        authserv_id="mx.test",
        clock=FakeClock(NOW, 0.0),
        enforcement=enforcement,
        recorder=store,
    )


@pytest.mark.parametrize(
    ("enforcement", "disposition", "reason"),
    [(Enforcement.POLICY, "reject", ""), (Enforcement.QUARANTINE, "quarantine", "local_policy")],
)
def test_the_mx_check_records_the_dmarc_evaluation_and_what_we_did(
    tmp_path: Path, enforcement: Enforcement, disposition: str, reason: str
) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    checker = _checker(store, enforcement)
    verdict = asyncio.run(
        checker.check(
            client_ip="192.0.2.1",
            helo="spoof.example",
            mail_from=Address.parse("news@sender.test"),
            message=MESSAGE,
        )
    )
    assert b"dmarc=fail" in verdict.header
    (event,) = store.dmarc_events(0, NOW + 3600)
    assert (event.source_ip, event.header_from, event.spf_result) == (
        "192.0.2.1",
        "sender.test",
        "fail",
    )
    assert (event.disposition, event.reason, event.count) == (disposition, reason, 1)
    assert event.policy == PolicyPublished("sender.test", "reject", "reject", 100, "r", "r", "0")


def test_a_from_domain_without_a_dmarc_record_is_not_recorded(tmp_path: Path) -> None:
    store = SqliteReportStore(tmp_path / "reports.db")
    checker = _checker(store, Enforcement.POLICY)
    message = MESSAGE.replace(b"sender.test", b"plain.test")
    asyncio.run(
        checker.check(client_ip="192.0.2.1", helo="x.example", mail_from=None, message=message)
    )
    assert store.dmarc_events(0, NOW + 3600) == []
