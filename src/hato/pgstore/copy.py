"""`hato store copy`'s table copier: the rows of one table between a SQLite file of the data
directory and the shared PostgreSQL, either way, crash-safe and idempotent.

Theory of operation. One table is one transaction on the destination: a crash (or ^C) in the
middle leaves the destination as it was before that table, and running the copy again does
the table again. A table with a natural key (an account's address, a key's address, a report
row's counted fields) is inserted with ON CONFLICT DO NOTHING on that key: a second run adds
nothing, a row the destination already has (the same account made on both sides) keeps the
destination's version, and rows added to the source since the last run are copied. A table
without one (`sent`, the sending-limit reservations) is copied once per source: the copy writes
a mark (source, table) in the same transaction, in `store_copies` on PostgreSQL or
`hato_copies` in the destination SQLite file, and a run that finds the mark skips the table.
The source is only read. The queue, whose bodies are streamed, has its own copier
(hato.queue.copy) on the same principles.

Must not import anything of hato but model.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

PAGE = 1000  # rows per executemany
_SQLITE_MARKS = (
    "CREATE TABLE IF NOT EXISTS hato_copies (source TEXT NOT NULL, item TEXT NOT NULL,"
    " copied_at REAL NOT NULL DEFAULT (strftime('%s', 'now')), PRIMARY KEY (source, item))"
)


@dataclass(frozen=True, slots=True)
class Table:
    """One table as it is on both sides (the same column names and meaning)."""

    item: str  # what the copy prints, and its mark
    sqlite_table: str
    pg_table: str
    columns: tuple[str, ...]
    key: tuple[str, ...] | None  # the natural key; None: copied once per source, by mark
    bools: tuple[str, ...] = ()  # 0/1 in SQLite, boolean in PostgreSQL


@dataclass(frozen=True, slots=True)
class Copied:
    item: str
    rows: int  # inserted into the destination
    seen: int  # read from the source
    skipped: bool = False  # copied from this source before (by mark)

    def line(self) -> str:
        if self.skipped:
            return f"{self.item}: copied from this source before (nothing done)"
        return f"{self.item}: {self.rows} copied, {self.seen - self.rows} already there"


def _cols(table: Table) -> str:
    return ", ".join(f'"{c}"' for c in table.columns)


def _insert(table: str, t: Table, mark: str) -> str:
    marks = ", ".join([mark] * len(t.columns))
    conflict = f" ON CONFLICT ({', '.join(t.key)}) DO NOTHING" if t.key else ""
    return f"INSERT INTO {table} ({_cols(t)}) VALUES ({marks}){conflict}"


def _pages(rows: Iterator[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    page: list[Sequence[Any]] = []
    for row in rows:
        page.append(row)
        if len(page) >= PAGE:
            yield page
            page = []
    if page:
        yield page


def file_to_pg(t: Table, path: Path, conn: psycopg.Connection[Any], source: str) -> Copied:
    """Copy `t` from the SQLite file `path` (only read) into PostgreSQL."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA query_only = 1")
        return sqlite_to_pg(t, db, conn, source)


def pg_to_file(t: Table, conn: psycopg.Connection[Any], path: Path, source: str) -> Copied:
    """Copy `t` from PostgreSQL into the SQLite file `path` (its schema made by its room)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA busy_timeout = 10000")
        return pg_to_sqlite(t, conn, db, source)


def sqlite_to_pg(
    t: Table, db: sqlite3.Connection, conn: psycopg.Connection[Any], source: str
) -> Copied:
    """Copy `t` from the open SQLite file `db` into PostgreSQL, in one transaction."""
    flags = [c in t.bools for c in t.columns]
    with conn.transaction():
        if (
            t.key is None
            and conn.execute(
                "SELECT 1 FROM store_copies WHERE source = %s AND item = %s", (source, t.item)
            ).fetchone()
        ):
            return Copied(t.item, 0, 0, skipped=True)
        rows = db.execute(f"SELECT {_cols(t)} FROM {t.sqlite_table}")
        seen = inserted = 0
        sql = _insert(t.pg_table, t, "%s")
        for page in _pages(iter(rows)):
            seen += len(page)
            with conn.cursor() as cur:
                for row in page:
                    cur.execute(sql, [bool(v) if f else v for v, f in zip(row, flags, strict=True)])
                    inserted += max(cur.rowcount, 0)
        conn.execute(
            "INSERT INTO store_copies (source, item) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (source, t.item),
        )
    return Copied(t.item, inserted, seen)


def pg_to_sqlite(
    t: Table, conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str
) -> Copied:
    """Copy `t` from PostgreSQL into the open SQLite file `db` (autocommit mode, its schema
    made by its room), in one SQLite transaction; the PostgreSQL rows are streamed."""
    db.execute(_SQLITE_MARKS)
    db.execute("BEGIN IMMEDIATE")
    try:
        if (
            t.key is None
            and db.execute(
                "SELECT 1 FROM hato_copies WHERE source = ? AND item = ?", (source, t.item)
            ).fetchone()
        ):
            db.execute("ROLLBACK")
            return Copied(t.item, 0, 0, skipped=True)
        sql = _insert(t.sqlite_table, t, "?")
        seen = inserted = 0
        rows = conn.cursor().stream(f"SELECT {_cols(t)} FROM {t.pg_table}")
        for page in _pages(rows):
            seen += len(page)
            for row in page:
                inserted += db.execute(sql, tuple(row)).rowcount
        db.execute(
            "INSERT INTO hato_copies (source, item) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (source, t.item),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return Copied(t.item, inserted, seen)
