"""The PostgreSQL queue's rows: inserting a message, and reading rows back into the model's
values. Must not import anything of hato but model and this room."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from hato.model import (
    Address,
    QueuedMessage,
    QueuedRecipient,
    RecipientDsn,
    format_path,
    parse_path,
)
from hato.model.queuestore import NewMessage
from hato.queue.body import BodyWriter, QueueWriteError

CHUNK = 1024 * 1024  # octets per queue_body_chunks row
MESSAGE_COLUMNS = "queue_id, mail_from, received_at, size, prefix, params"


def message_from_row(row: Sequence[Any]) -> QueuedMessage:
    """A message without its body (the runner loads it with `load_body`)."""
    queue_id, mail_from, received_at, size, prefix, params = row[:6]
    return QueuedMessage(
        queue_id=queue_id,
        mail_from=parse_path(mail_from, allow_null=True),
        received_at=float(received_at),
        body_path="",
        size=int(size),
        prefix=bytes(prefix),
        params=json.loads(params),
    )


def recipient_from_row(row: Sequence[Any]) -> QueuedRecipient:
    row_id, address, original, attempts, recovered, notify, orcpt = row
    return QueuedRecipient(
        row_id=int(row_id),
        address=Address.parse(address),
        original=Address.parse(original),
        attempts=int(attempts),
        recovered=bool(recovered),
        dsn=RecipientDsn.parse(notify, orcpt),
    )


_RECIPIENT_COLUMNS = (
    "queue_id, address, original, status, next_attempt, lease_owner, lease_until, updated_at,"
    " notify, orcpt"
)
_RECIPIENT_TYPES = ("text", "text", "text", "text", "float8", "text", "float8", "float8", "text",
                    "text")  # fmt: skip
_MESSAGE_TYPES = ("text", "text", "float8", "bigint", "bytea", "text", "bytea")


def _unnest(types: Sequence[str]) -> str:
    # %b: each array sent in PostgreSQL's binary format. psycopg writes a text array in
    # Python, element by element (a bytea as hex, then every backslash escaped again): some
    # 0.6 ms for a 10 KiB body, most of this node's extra CPU a message over SQLite's; the
    # binary array is the elements' lengths and their octets as they are (benchmarks:
    # docs/performance.md, issue 16, "Hato's CPU on PostgreSQL").
    return ", ".join(f"%b::{kind}[]" for kind in types)


async def insert_messages(
    conn: psycopg.AsyncConnection[Any],
    batch: Sequence[tuple[NewMessage, BodyWriter, bool]],
    *,
    node_id: str | None,
    lease_seconds: float,
) -> psycopg.AsyncCursor[Any]:
    """Insert a group's messages (`batch`: each with its body writer and whether it is held),
    their bodies (inline in the message row, or read back from the scratch file in chunks)
    and their recipient rows, leased to `node_id` until received + `lease_seconds` (leased to
    nobody when held or without `node_id`), in the caller's transaction. Two statements
    whatever the group's size, each column an array unnested (one statement text, so psycopg
    prepares it once), then a chunked body's rows one at a time: a caller in pipeline mode
    sends them without waiting. The cursor whose rows `row_ids` reads."""
    columns: list[list[object]] = [[] for _ in _MESSAGE_TYPES]
    for msg, _, _ in batch:
        values = (
            msg.queue_id,
            format_path(msg.mail_from),
            msg.received_at,
            msg.size,
            msg.prefix,
            json.dumps(dict(msg.params), separators=(",", ":")),
            msg.body,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await conn.execute(
        f"INSERT INTO queue_messages ({MESSAGE_COLUMNS}, body)"
        f" SELECT * FROM unnest({_unnest(_MESSAGE_TYPES)})",
        columns,
    )
    for msg, body, _ in batch:
        if msg.body is None:
            chunks = body.read_back(CHUNK)
            seq = 0
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                await conn.execute(
                    "INSERT INTO queue_body_chunks (queue_id, seq, data) VALUES (%s, %s, %s)",
                    (msg.queue_id, seq, chunk),
                )
                seq += 1
    rows: list[list[object]] = [[] for _ in _RECIPIENT_TYPES]
    for msg, _, held in batch:
        owner = None if held else node_id
        lease_until = None if owner is None else msg.received_at + lease_seconds
        status = "held" if held else "queued"
        for address, original, dsn in msg.recipients:
            row = (msg.queue_id, str(address), str(original), status, msg.received_at, owner,
                   lease_until, msg.received_at, dsn.notify_param, dsn.orcpt)  # fmt: skip
            for column, value in zip(rows, row, strict=True):
                column.append(value)
    # row_id is a sequence, drawn in the rows' order: a message's ids, sorted, are its
    # recipients' in order.
    return await conn.execute(
        f"INSERT INTO queue_recipients ({_RECIPIENT_COLUMNS})"
        f" SELECT {_RECIPIENT_COLUMNS} FROM unnest({_unnest(_RECIPIENT_TYPES)})"
        f" WITH ORDINALITY AS r ({_RECIPIENT_COLUMNS}, n) ORDER BY n RETURNING queue_id, row_id",
        rows,
    )


async def row_ids(
    cursor: psycopg.AsyncCursor[Any], msgs: Sequence[NewMessage]
) -> list[tuple[int, ...]]:
    """The recipient row ids of `insert_messages`, for each of `msgs` in the order of its
    recipients."""
    ids: dict[str, list[int]] = {msg.queue_id: [] for msg in msgs}
    for queue_id, row_id in await cursor.fetchall():
        ids[queue_id].append(int(row_id))
    return [tuple(sorted(ids[msg.queue_id])) for msg in msgs]


# The group's key check fails its own statement when a key is found, which rolls the group
# back whether it is an implicit transaction (pipeline mode: no ROLLBACK can follow a result
# read) or an explicit one. Plain SQL has no RAISE: a text that is no integer, cast to one,
# is the error (SQLSTATE 22P02), and this mark in its message says it is this one.
KEY_MARK = "hato: a key was imported for"


async def refuse_keyed(conn: psycopg.AsyncConnection[Any], addresses: Collection[str]) -> None:
    """In a commit's transaction: fail it (`key_refused` says so of the error) when any of
    `addresses` (canonical, crypto/keystore.py) has a key in the users' `keys` table, which
    shares this database (pgstore/schema.py); one statement, sent in the commit's pipeline
    (no round trip of its own); nothing when there is nothing to ask."""
    if addresses:
        await conn.execute(
            "SELECT (%s || ' ' || string_agg(address, ' '))::integer FROM keys"
            " WHERE address = ANY(%b) HAVING count(*) > 0",
            (KEY_MARK, sorted(addresses)),
        )


def key_refused(exc: BaseException) -> bool:
    """Whether `exc` is `refuse_keyed`'s refusal."""
    return isinstance(exc, psycopg.errors.InvalidTextRepresentation) and KEY_MARK in str(exc)


async def keys_among(
    conn: psycopg.AsyncConnection[Any], addresses: Collection[str]
) -> frozenset[str]:
    """Which of `addresses` have a key now (one autocommit statement)."""
    cursor = await conn.execute(
        "SELECT address FROM keys WHERE address = ANY(%b)", (sorted(addresses),)
    )
    return frozenset(str(address) for (address,) in await cursor.fetchall())


async def stream_body(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], queue_id: str, path: str
) -> None:
    """A chunked body streamed from the database into the file `path` (never whole in
    memory); raises QueueWriteError (the file removed) when the database cannot be read."""
    file = await asyncio.to_thread(open, path, "wb")
    try:
        async with pool.connection() as conn:
            cursor = conn.cursor()
            async for (data,) in cursor.stream(
                "SELECT data FROM queue_body_chunks WHERE queue_id = %s ORDER BY seq",
                (queue_id,),
            ):
                await asyncio.to_thread(file.write, data)
    except psycopg.Error as exc:
        file.close()
        await asyncio.to_thread(unlink, path)
        # A QueueWriteError, as from `_run`: the runner's attempt ends and the rows wait.
        raise write_error(exc, "load body") from exc
    await asyncio.to_thread(file.close)


def write_error(exc: BaseException, what: str) -> QueueWriteError:
    if isinstance(exc, QueueWriteError):
        return exc
    if isinstance(exc, OSError):
        return QueueWriteError.from_os(exc, what)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return QueueWriteError(None, f"{what}: {first}")


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class OwnBodies:
    """The inline bodies of messages this node committed leased to nobody (its runner busy:
    queue/postgres.py), kept until its own due scan takes them, so that the scan need not
    read back from the database the octets this node sent it a moment before (at 50
    sessions most messages go that way: issue 16, docs/performance.md); a message queued is
    never rewritten, so the kept octets are the stored ones. At most `limit` octets, the
    oldest forgotten first (another node may have taken them, or the scan reads them)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._bodies: dict[str, bytes] = {}  # in insertion order: the oldest first

    def keep(self, queue_id: str, body: bytes) -> None:
        if len(body) > self._limit:
            return
        self._bodies[queue_id] = body
        self._size += len(body)
        while self._size > self._limit:
            self.take(next(iter(self._bodies)))

    def ids(self) -> list[str]:
        return list(self._bodies)

    def take(self, queue_id: str) -> bytes | None:
        """The kept body of `queue_id`, forgotten here; None when none is kept."""
        body = self._bodies.pop(queue_id, None)
        if body is not None:
            self._size -= len(body)
        return body
