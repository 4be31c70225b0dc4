"""The operator's `Selector` as SQL, and the rows it selects as `RowView`s, for both backends.

Must not import anything of hato but model and this room.

The SQLite (`sqlite_admin.py`) and PostgreSQL (`postgres_admin.py`) admin statements select the
same columns of the same two tables (named differently) with the same conditions; only the
placeholder style differs ("?" for sqlite3, "%s" for psycopg).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from hato.model.queuestore import RowView, Selector
from hato.queue.explain import explain

_ROW_COLUMNS = (
    "r.queue_id, m.received_at, m.size, m.mail_from, r.row_id, r.address, r.original,"
    " r.status, r.attempts, r.next_attempt, r.last_reply, r.lease_until"
)
_FIELDS = [f.name for f in dataclasses.fields(RowView)][:11]


def where(selector: Selector, placeholder: str = "?") -> tuple[str, list[object]]:
    """The selector as an SQL condition on `recipients r JOIN messages m` (whatever the two
    tables are called), and its arguments; `placeholder` is the driver's ("?" or "%s")."""
    clauses, args = ["1 = 1"], list[object]()
    if selector.queue_id is not None:
        clauses.append(f"r.queue_id = {placeholder}")
        args.append(selector.queue_id)
    if (domain := selector.domain_key) is not None:
        # The domain is a name, not a pattern: LIKE's wildcards and escape are escaped.
        clauses.append(f"lower(r.address) LIKE {placeholder} ESCAPE '\\'")
        args.append("%@" + domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
    if (sender := selector.sender_key) is not None:
        clauses.append(f"lower(m.mail_from) = {placeholder}")
        args.append(sender)
    return " AND ".join(clauses), args


def select_rows(
    selector: Selector, *, recipients: str, messages: str, placeholder: str, extra: str = ""
) -> tuple[str, list[object]]:
    """The SELECT of the selected recipient rows (`extra`: more conditions, starting with
    " AND"), oldest message first, and its arguments; read its rows with `row_views`."""
    condition, args = where(selector, placeholder)
    return (
        f"SELECT {_ROW_COLUMNS} FROM {recipients} r JOIN {messages} m"
        f" ON m.queue_id = r.queue_id WHERE {condition}{extra}"
        " ORDER BY m.received_at, r.queue_id, r.row_id"
    ), args


def row_views(rows: Iterable[Sequence[Any]], *, now: float, live: bool) -> list[RowView]:
    """The rows of `select_rows`, each explained; a row leased beyond `now` is `busy` when
    a lease can be live (`live`)."""
    out = []
    for row in rows:
        lease = row[-1]
        view = RowView(**dict(zip(_FIELDS, row, strict=False)), busy=live and (lease or 0) > now)
        out.append(dataclasses.replace(view, why=explain(view, now)))
    return out
