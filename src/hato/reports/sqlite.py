"""The report store on SQLite: `reports.db` in the data directory (mode 0600, WAL).

Theory of operation: recording is a dictionary update in memory, nothing else: equal events
(same hour, every reported field the same) are summed there, and a flusher thread writes what
gathered every FLUSH_SECONDS in one transaction, each row one UPSERT that adds to its hour's
count. So a message costs no I/O on the event loop, a busy database (another worker holds the
lock) stalls only the flusher, and a day of mail from the same senders is a few rows whatever
the volume. The file is in WAL mode with synchronous=NORMAL: a commit is a write to the log,
never an fsync. A crash or power cut loses the last seconds of events, which costs report
counts, never a message; a batch that cannot be written is dropped and logged
(`report-record-failed`). Every worker process opens its own store on the same file. Reads
(`dmarc_events`, ...) flush this store's own batch first. All SQL of the reports room lives
here; a PostgreSQL store implements the same `ReportStore`.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

from hato.model import logfmt
from hato.reports.records import (
    HOUR,
    DkimAuth,
    DmarcEvent,
    PolicyPublished,
    PolicyType,
    TlsEvent,
    TlsFailure,
)

log = logging.getLogger("hato.reports")

REPORTS_DB = "reports.db"
_BUSY_TIMEOUT = 10.0  # seconds the flusher (or a report run) waits for another worker's lock
FLUSH_SECONDS = 2.0  # how often the flusher writes what was recorded

_DMARC_KEY = (
    "hour, source_ip, header_from, envelope_from, spf_domain, spf_result, dkim, dkim_aligned, "
    "spf_aligned, disposition, reason, policy_domain, p, sp, pct, adkim, aspf, fo"
)
_TLS_KEY = (
    "hour, policy_domain, policy_type, policy_strings, mx_host, receiving_ip, failure, detail"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS dmarc (
    hour INTEGER NOT NULL, source_ip TEXT NOT NULL, header_from TEXT NOT NULL,
    envelope_from TEXT NOT NULL, spf_domain TEXT NOT NULL, spf_result TEXT NOT NULL,
    dkim TEXT NOT NULL, dkim_aligned INTEGER NOT NULL, spf_aligned INTEGER NOT NULL,
    disposition TEXT NOT NULL, reason TEXT NOT NULL, policy_domain TEXT NOT NULL,
    p TEXT NOT NULL, sp TEXT NOT NULL, pct INTEGER NOT NULL, adkim TEXT NOT NULL,
    aspf TEXT NOT NULL, fo TEXT NOT NULL, count INTEGER NOT NULL,
    UNIQUE ({_DMARC_KEY})
);
CREATE TABLE IF NOT EXISTS tls (
    hour INTEGER NOT NULL, policy_domain TEXT NOT NULL, policy_type TEXT NOT NULL,
    policy_strings TEXT NOT NULL, mx_host TEXT NOT NULL, receiving_ip TEXT NOT NULL,
    failure TEXT NOT NULL, detail TEXT NOT NULL, count INTEGER NOT NULL,
    UNIQUE ({_TLS_KEY})
);
CREATE TABLE IF NOT EXISTS sent (kind TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (run_end REAL PRIMARY KEY, node TEXT NOT NULL);
"""


def _hour(time: float) -> int:
    return int(time // HOUR) * HOUR


class SqliteReportStore:
    """`ReportStore` on one SQLite file (see the module docstring). `reports/postgres.py` is
    the same store on the shared PostgreSQL: it changes the tables' names and the few methods
    that touch the database (`_write`, `_query`, `_change`, `_close_db`)."""

    _DMARC, _TLS, _SENT, _RUNS = "dmarc", "tls", "sent", "runs"
    _BOOL: type[int] = int  # how an aligned flag is stored
    node = "this node"

    def __init__(
        self,
        path: Path | None,
        *,
        flush_seconds: float | None = None,
        busy_timeout: float = _BUSY_TIMEOUT,
    ) -> None:
        """`flush_seconds`: run the flusher thread (the server); None: writes happen at
        `flush()`, at a read and at `close()` only (tools, tests)."""
        if path is not None and not path.exists():
            path.touch(mode=0o600)
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            timeout=busy_timeout,
            isolation_level=None,  # autocommit; a batch is one explicit transaction
            check_same_thread=False,  # the flusher thread and the loop, under `_db_lock`
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # no fsync per batch
        self._db.executescript(_SCHEMA)
        self._db_lock = threading.Lock()
        self._start(flush_seconds)

    def _start(self, flush_seconds: float | None) -> None:
        self._lock = threading.Lock()  # guards the two batches
        self._dmarc: dict[tuple[object, ...], int] = {}
        self._tls: dict[tuple[object, ...], int] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_seconds is not None:
            self._flusher = threading.Thread(
                target=self._run, args=(flush_seconds,), name="reports-flush", daemon=True
            )
            self._flusher.start()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteReportStore:
        """The server's store, with its flusher."""
        return cls(data_dir / REPORTS_DB, flush_seconds=FLUSH_SECONDS)

    def _run(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.flush()

    def record_dmarc(self, event: DmarcEvent) -> None:
        p = event.policy
        dkim = json.dumps([[d.domain, d.selector, d.result] for d in event.dkim])
        key = (
            _hour(event.time), event.source_ip, event.header_from, event.envelope_from,
            event.spf_domain, event.spf_result, dkim, self._BOOL(event.dkim_aligned),
            self._BOOL(event.spf_aligned), event.disposition, event.reason, p.domain, p.p, p.sp,
            p.pct, p.adkim, p.aspf, p.fo,
        )  # fmt: skip
        with self._lock:
            self._dmarc[key] = self._dmarc.get(key, 0) + event.count

    def record_tls(self, event: TlsEvent) -> None:
        key = (
            _hour(event.time), event.policy_domain, event.policy_type.value,
            json.dumps(list(event.policy_strings)), event.mx_host, event.receiving_ip,
            event.failure.value if event.failure is not None else "", event.detail,
        )  # fmt: skip
        with self._lock:
            self._tls[key] = self._tls.get(key, 0) + event.count

    def flush(self) -> None:
        """Write what was recorded since the last flush (one transaction)."""
        with self._lock:
            dmarc, self._dmarc = self._dmarc, {}
            tls, self._tls = self._tls, {}
        if not dmarc and not tls:
            return
        self._write(dmarc, tls)

    def _write(
        self, dmarc: dict[tuple[object, ...], int], tls: dict[tuple[object, ...], int]
    ) -> None:
        with self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._upsert(self._DMARC, _DMARC_KEY, dmarc)
                    self._upsert(self._TLS, _TLS_KEY, tls)
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                # Report data is worth less than the mail: the batch is dropped, not retried.
                log.warning(logfmt("report-record-failed", events=sum(dmarc.values()) +
                                   sum(tls.values()), error=str(exc)))  # fmt: skip

    def _upsert(self, table: str, key: str, batch: dict[tuple[object, ...], int]) -> None:
        if not batch:
            return
        marks = ", ".join("?" * (key.count(",") + 2))
        self._db.executemany(
            f"INSERT INTO {table} ({key}, count) VALUES ({marks}) "
            f"ON CONFLICT ({key}) DO UPDATE SET count = count + excluded.count",
            [(*values, count) for values, count in batch.items()],
        )

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        self.flush()
        with self._db_lock:
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[object, ...]) -> int:
        """Run one INSERT/UPDATE/DELETE; the rows it changed."""
        with self._db_lock:
            return int(self._db.execute(sql, args).rowcount)

    def dmarc_events(self, begin: float, end: float) -> list[DmarcEvent]:
        key = _DMARC_KEY.replace("hour, ", "")
        rows = self._query(
            f"SELECT MIN(hour), {key}, SUM(count) FROM {self._DMARC} WHERE hour >= ? AND hour < ? "
            f"GROUP BY {key} ORDER BY policy_domain, source_ip",
            (begin, end),
        )
        return [_dmarc_event(row) for row in rows]

    def tls_events(self, begin: float, end: float) -> list[TlsEvent]:
        key = _TLS_KEY.replace("hour, ", "")
        rows = self._query(
            f"SELECT MIN(hour), {key}, SUM(count) FROM {self._TLS} WHERE hour >= ? AND hour < ? "
            f"GROUP BY {key} ORDER BY policy_domain, mx_host",
            (begin, end),
        )
        return [_tls_event(row) for row in rows]

    def prune(self, before: float) -> int:
        self.flush()
        removed = 0
        for table in (self._DMARC, self._TLS):
            removed += self._change(f"DELETE FROM {table} WHERE hour < ?", (before,))
        return removed

    def last_sent(self, kind: str) -> float | None:
        rows = self._query(f"SELECT until FROM {self._SENT} WHERE kind = ?", (kind,))
        return float(str(rows[0][0])) if rows else None

    def mark_sent(self, kind: str, end: float) -> None:
        self._change(
            f"INSERT INTO {self._SENT} (kind, until) VALUES (?, ?) "
            "ON CONFLICT (kind) DO UPDATE SET until = excluded.until",
            (kind, end),
        )

    def claim_run(self, end: float) -> bool:
        return bool(
            self._change(
                f"INSERT INTO {self._RUNS} (run_end, node) VALUES (?, ?) "
                "ON CONFLICT (run_end) DO NOTHING",
                (end, self.node),
            )
        )

    def close(self) -> None:
        """Stop the flusher, write what is left, close the file."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        self._close_db()

    def _close_db(self) -> None:
        self._db.close()


def _dmarc_event(row: tuple[object, ...]) -> DmarcEvent:
    (hour, ip, header_from, envelope_from, spf_domain, spf_result, dkim, dkim_aligned,
     spf_aligned, disposition, reason, domain, p, sp, pct, adkim, aspf, fo, count,
     ) = row  # fmt: skip
    return DmarcEvent(
        time=float(str(hour)),
        source_ip=str(ip),
        header_from=str(header_from),
        envelope_from=str(envelope_from),
        spf_domain=str(spf_domain),
        spf_result=str(spf_result),
        dkim=tuple(DkimAuth(str(d), str(s), str(r)) for d, s, r in json.loads(str(dkim))),
        dkim_aligned=bool(dkim_aligned),
        spf_aligned=bool(spf_aligned),
        disposition=str(disposition),
        reason=str(reason),
        policy=PolicyPublished(
            str(domain), str(p), str(sp), int(str(pct)), str(adkim), str(aspf), str(fo)
        ),
        count=int(str(count)),
    )


def _tls_event(row: tuple[object, ...]) -> TlsEvent:
    hour, domain, kind, strings, mx, ip, failure, detail, count = row
    return TlsEvent(
        time=float(str(hour)),
        policy_domain=str(domain),
        policy_type=PolicyType(str(kind)),
        policy_strings=tuple(str(s) for s in json.loads(str(strings))),
        mx_host=str(mx),
        receiving_ip=str(ip),
        failure=TlsFailure(str(failure)) if failure else None,
        detail=str(detail),
        count=int(str(count)),
    )
