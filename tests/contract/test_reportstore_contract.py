"""The contract every `ReportStore` backend passes (src/hato/reports/records.py).

What it checks, each on every backend: equal events of one hour are one counted row, events of
other hours or with another field are rows of their own, a query sums the hours in [begin, end)
and gives every field back as recorded; two stores on the same storage (two worker processes)
count into the same rows once flushed; `prune` forgets the hours before its bound and says how
many rows went; `mark_sent` / `last_sent` keep the end of the last report per kind; the run of
an interval is claimed by one store only.

Adding a backend: write a class with `open()` (a store on the test's own storage; called twice,
it gives two stores on the same storage, as two workers have) and add it to `BACKENDS`. A
backend whose server is missing skips with the reason outside CI (tests/integration/peers:
`require_peer`); `BACKENDS` gives the request for a fixture (PostgreSQL's asks for `pg_dsn`).
A test that only holds for one backend belongs in tests/unit/reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from peers.postgres import PASSWORD as PG_PASSWORD

from hato.reports import (
    DkimAuth,
    DmarcEvent,
    PolicyPublished,
    PolicyType,
    ReportStore,
    SqliteReportStore,
    TlsEvent,
    TlsFailure,
)

HOUR = 3600
T = 1_800_000_000.0  # an hour boundary
POLICY = PolicyPublished("sender.test", "reject", "quarantine", 50, "s", "r", "1")


class Backend(Protocol):
    def open(self) -> ReportStore: ...


class SqliteBackend:
    def __init__(self, root: Path) -> None:
        self.path = root / "reports.db"

    def open(self) -> ReportStore:
        return SqliteReportStore(self.path)


class PostgresBackend:
    """Stores on one database of the private PostgreSQL, as the nodes of a cluster."""

    def __init__(self, dsn: str) -> None:
        from psycopg_pool import ConnectionPool

        self.pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            kwargs={"password": PG_PASSWORD, "autocommit": True},
            min_size=1,
            max_size=4,
            open=True,
        )
        self.opened = 0

    def open(self) -> ReportStore:
        from hato.reports.postgres import PgReportStore

        self.opened += 1
        return PgReportStore(self.pool, node=f"node-{self.opened}")


def _postgres(request: pytest.FixtureRequest, _root: Path) -> Backend:
    import psycopg

    from hato.pgstore import migrate

    dsn = request.getfixturevalue("pg_dsn")  # skips (or fails in CI) without PostgreSQL
    with psycopg.connect(dsn, password=PG_PASSWORD, autocommit=True) as conn:
        migrate(conn)
    return PostgresBackend(dsn)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": lambda _request, root: SqliteBackend(root),
    "postgresql": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](request, tmp_path)
    yield made
    if isinstance(made, PostgresBackend):
        made.pool.close()


def dmarc(time: float = T + 10, ip: str = "192.0.2.1", disposition: str = "reject") -> DmarcEvent:
    return DmarcEvent(
        time=time,
        source_ip=ip,
        header_from="sender.test",
        envelope_from="",
        spf_domain="helo.sender.test",
        spf_result="softfail",
        dkim=(DkimAuth("sender.test", "s1", "fail"), DkimAuth("esp.test", "k", "pass")),
        dkim_aligned=False,
        spf_aligned=False,
        disposition=disposition,
        reason="sampled_out" if disposition == "none" else "",
        policy=POLICY,
    )


def tls(time: float = T + 10, failure: TlsFailure | None = None) -> TlsEvent:
    return TlsEvent(
        time=time,
        policy_domain="rcpt.test",
        policy_type=PolicyType.TLSA,
        policy_strings=("3 1 1 abcd",),
        mx_host="mx.rcpt.test",
        receiving_ip="2001:db8::25",
        failure=failure,
        detail="no STARTTLS" if failure else "",
    )


def test_equal_events_of_an_hour_are_one_counted_row(backend: Backend) -> None:
    store = backend.open()
    for _ in range(3):
        store.record_dmarc(dmarc())
    store.record_dmarc(dmarc(time=T + HOUR - 1))  # the same hour
    store.record_dmarc(dmarc(ip="198.51.100.1"))
    store.record_dmarc(dmarc(disposition="none"))
    events = store.dmarc_events(T, T + HOUR)
    counts = sorted((e.source_ip, e.disposition, e.count) for e in events)
    assert counts == [("192.0.2.1", "none", 1), ("192.0.2.1", "reject", 4),
                      ("198.51.100.1", "reject", 1)]  # fmt: skip
    (first,) = [e for e in events if e.count == 4]
    assert first == dataclasses.replace(dmarc(), time=T, count=4)  # every field as recorded
    store.close()


def test_a_query_sums_the_hours_of_its_interval(backend: Backend) -> None:
    store = backend.open()
    for hour in range(3):
        store.record_dmarc(dmarc(time=T + hour * HOUR + 5))
        store.record_tls(tls(time=T + hour * HOUR + 5))
    assert [e.count for e in store.dmarc_events(T, T + 2 * HOUR)] == [2]
    assert [e.count for e in store.dmarc_events(T + HOUR, T + 3 * HOUR)] == [2]
    assert [e.count for e in store.tls_events(T, T + 3 * HOUR)] == [3]
    assert store.prune(T + 2 * HOUR) == 4  # two hours of both kinds
    assert [e.count for e in store.dmarc_events(0, T + 3 * HOUR)] == [1]
    store.close()


def test_tls_events_come_back_as_recorded(backend: Backend) -> None:
    store = backend.open()
    store.record_tls(tls(failure=TlsFailure.STARTTLS_NOT_SUPPORTED))
    store.record_tls(tls(failure=TlsFailure.STARTTLS_NOT_SUPPORTED))
    store.record_tls(tls())
    events = sorted(store.tls_events(T, T + HOUR), key=lambda e: e.count)
    assert events == [
        TlsEvent(T, "rcpt.test", PolicyType.TLSA, ("3 1 1 abcd",), "mx.rcpt.test",
                 "2001:db8::25", None, "", 1),
        TlsEvent(T, "rcpt.test", PolicyType.TLSA, ("3 1 1 abcd",), "mx.rcpt.test",
                 "2001:db8::25", TlsFailure.STARTTLS_NOT_SUPPORTED, "no STARTTLS", 2),
    ]  # fmt: skip
    store.close()


def test_two_workers_count_into_the_same_rows(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    one.record_dmarc(dmarc())
    two.record_dmarc(dmarc())
    two.flush()  # what another worker holds in memory shows once it is flushed
    assert [e.count for e in one.dmarc_events(T, T + HOUR)] == [2]
    one.mark_sent("dmarc", T)
    assert two.last_sent("dmarc") == T
    assert two.last_sent("tlsrpt") is None
    two.mark_sent("dmarc", T + HOUR)
    assert one.last_sent("dmarc") == T + HOUR
    one.close()
    two.close()


def test_one_store_claims_an_interval(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    assert one.claim_run(T + HOUR)
    assert not two.claim_run(T + HOUR) and not one.claim_run(T + HOUR)
    assert two.claim_run(T + 2 * HOUR)
    one.close()
    two.close()
