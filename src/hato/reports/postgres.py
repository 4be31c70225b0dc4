"""The report store on the shared PostgreSQL ([store] backend = "postgresql"): the same
`SqliteReportStore` (recording in memory, a flusher thread writing each batch as one
transaction of UPSERTs that add to the hour's counts, reads that flush first) over the
`report_dmarc`, `report_tls`, `report_sent` and `report_runs` tables (hato.pgstore.schema, 4),
so that every node counts into the same rows and one node sends each interval's reports
(`claim_run`: the first node to insert the interval's end sends it).

A batch that cannot be written (the database down) is dropped and logged
(`report-record-failed`), as on SQLite: report counts are worth less than the mail.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hato.model import logfmt
from hato.reports.sqlite import _DMARC_KEY, _TLS_KEY, SqliteReportStore

log = logging.getLogger("hato.reports")

WAIT = 5.0  # seconds to wait for a pooled connection
FLUSH_SECONDS = 2.0


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # the shared SQL holds no literal "?"


class PgReportStore(SqliteReportStore):
    """`ReportStore` on the shared PostgreSQL store; the pool is the caller's."""

    _DMARC, _TLS, _SENT, _RUNS = "report_dmarc", "report_tls", "report_sent", "report_runs"
    _BOOL = bool

    def __init__(
        self, pool: ConnectionPool[Any], *, node: str, flush_seconds: float | None = None
    ) -> None:  # no SQLite file: no super().__init__
        self._pool = pool
        self.node = node
        self._start(flush_seconds)

    def _write(
        self, dmarc: dict[tuple[object, ...], int], tls: dict[tuple[object, ...], int]
    ) -> None:
        try:
            with self._pool.connection(timeout=WAIT) as conn, conn.transaction():
                for table, key, batch in ((self._DMARC, _DMARC_KEY, dmarc),
                                          (self._TLS, _TLS_KEY, tls)):  # fmt: skip
                    if not batch:
                        continue
                    marks = ", ".join(["%s"] * (key.count(",") + 2))
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {table} ({key}, count) VALUES ({marks}) ON CONFLICT"
                            f" ({key}) DO UPDATE SET count = {table}.count + excluded.count",
                            [(*values, count) for values, count in batch.items()],
                        )
        except psycopg.Error as exc:
            # Report data is worth less than the mail: the batch is dropped, not retried.
            events = sum(dmarc.values()) + sum(tls.values())
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning(logfmt("report-record-failed", events=events, error=detail))

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        self.flush()
        with self._pool.connection(timeout=WAIT) as conn:
            rows: list[tuple[object, ...]] = conn.execute(_pg(sql), args).fetchall()
            return rows

    def _change(self, sql: str, args: tuple[object, ...]) -> int:
        with self._pool.connection(timeout=WAIT) as conn:
            return int(conn.execute(_pg(sql), args).rowcount)

    def _close_db(self) -> None:
        """The pool is the caller's."""
