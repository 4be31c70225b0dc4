"""The report store on SQLite: `reports.db` in the data directory (mode 0600, WAL).

Theory of operation: each event is one UPSERT into its hour's row (the key is every reported
field), so a day of mail from the same senders is a few rows whatever the volume. The file
is in WAL mode with synchronous=NORMAL: a commit is a write to the log, never an fsync; a
power cut may lose the last events, which costs a report row, never a message. Every worker
process opens its own connection; SQLite's lock serialises the writers (a short busy timeout:
an event that cannot be written in time is dropped and logged, never waited for). All SQL of
the reports room lives here; a PostgreSQL store implements the same `ReportStore`.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import json
import logging
import sqlite3
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
_BUSY_TIMEOUT = 0.5  # seconds: recording must not hold a session up for long

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
"""


def _hour(time: float) -> int:
    return int(time // HOUR) * HOUR


class SqliteReportStore:
    """`ReportStore` on one SQLite file (see the module docstring)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None and not path.exists():
            path.touch(mode=0o600)
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,  # autocommit: each UPSERT is its own short transaction
            check_same_thread=False,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # no fsync per event
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteReportStore:
        return cls(data_dir / REPORTS_DB)

    def record_dmarc(self, event: DmarcEvent) -> None:
        p = event.policy
        dkim = json.dumps([[d.domain, d.selector, d.result] for d in event.dkim])
        values = (
            _hour(event.time), event.source_ip, event.header_from, event.envelope_from,
            event.spf_domain, event.spf_result, dkim, int(event.dkim_aligned),
            int(event.spf_aligned), event.disposition, event.reason, p.domain, p.p, p.sp,
            p.pct, p.adkim, p.aspf, p.fo, event.count,
        )  # fmt: skip
        self._upsert("dmarc", _DMARC_KEY, values)

    def record_tls(self, event: TlsEvent) -> None:
        values = (
            _hour(event.time), event.policy_domain, event.policy_type.value,
            json.dumps(list(event.policy_strings)), event.mx_host, event.receiving_ip,
            event.failure.value if event.failure is not None else "", event.detail, event.count,
        )  # fmt: skip
        self._upsert("tls", _TLS_KEY, values)

    def _upsert(self, table: str, key: str, values: tuple[object, ...]) -> None:
        marks = ", ".join("?" * len(values))
        try:
            self._db.execute(
                f"INSERT INTO {table} ({key}, count) VALUES ({marks}) "
                f"ON CONFLICT ({key}) DO UPDATE SET count = count + excluded.count",
                values,
            )
        except sqlite3.Error as exc:
            # Report data is worth less than the message being received or delivered.
            log.warning(logfmt("report-record-failed", table=table, error=str(exc)))

    def dmarc_events(self, begin: float, end: float) -> list[DmarcEvent]:
        key = _DMARC_KEY.replace("hour, ", "")
        rows = self._db.execute(
            f"SELECT MIN(hour), {key}, SUM(count) FROM dmarc WHERE hour >= ? AND hour < ? "
            f"GROUP BY {key} ORDER BY policy_domain, source_ip",
            (begin, end),
        ).fetchall()
        return [_dmarc_event(row) for row in rows]

    def tls_events(self, begin: float, end: float) -> list[TlsEvent]:
        key = _TLS_KEY.replace("hour, ", "")
        rows = self._db.execute(
            f"SELECT MIN(hour), {key}, SUM(count) FROM tls WHERE hour >= ? AND hour < ? "
            f"GROUP BY {key} ORDER BY policy_domain, mx_host",
            (begin, end),
        ).fetchall()
        return [_tls_event(row) for row in rows]

    def prune(self, before: float) -> int:
        removed = 0
        for table in ("dmarc", "tls"):
            removed += self._db.execute(f"DELETE FROM {table} WHERE hour < ?", (before,)).rowcount
        return removed

    def last_sent(self, kind: str) -> float | None:
        row = self._db.execute("SELECT until FROM sent WHERE kind = ?", (kind,)).fetchone()
        return None if row is None else float(row[0])

    def mark_sent(self, kind: str, end: float) -> None:
        self._db.execute(
            "INSERT INTO sent (kind, until) VALUES (?, ?) "
            "ON CONFLICT (kind) DO UPDATE SET until = excluded.until",
            (kind, end),
        )

    def close(self) -> None:
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
