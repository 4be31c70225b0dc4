"""``hato store copy --from sqlite --to postgresql`` (and back): move an installation's state
between the SQLite files of its data directory and the shared PostgreSQL store.

What is copied: the queue (messages, recipient rows, bodies: hato.queue.copy), the accounts
(password hashes, SCRAM keys), users' public keys and key policies, sending holds and the
sending-limit reservations, DMARC/TLS report data and when reports were last sent
(hato.pgstore.copy). Not copied: the AUTH failure counters and blocks, which on SQLite live
in the server's memory only (nothing to copy from, nowhere to copy to).

Both sides must be quiet: the data directory's lock (DATA_DIR/hato.lock) is held for the whole
copy, so no `hato serve` runs on it meanwhile, and with PostgreSQL as the source no node may
have sent a heartbeat lately. The PostgreSQL side is [store] dsn of the configuration (so the
configuration says backend = "postgresql"); the SQLite side is its server.data_dir. Crash-safe
and idempotent: see the two copiers' docstrings.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.errors import EX_CONFIG, EX_FAILURE, CommandError

if TYPE_CHECKING:
    import psycopg

    from hato.config import Settings
    from hato.pgstore.copy import Copied, Table

EX_USAGE = 64
EX_TEMPFAIL = 75
BACKENDS = ("sqlite", "postgresql")

_DMARC = (
    "hour", "source_ip", "header_from", "envelope_from", "spf_domain", "spf_result", "dkim",
    "dkim_aligned", "spf_aligned", "disposition", "reason", "policy_domain", "p", "sp", "pct",
    "adkim", "aspf", "fo",
)  # fmt: skip
_TLS = (
    "hour", "policy_domain", "policy_type", "policy_strings", "mx_host", "receiving_ip",
    "failure", "detail",
)  # fmt: skip


def tables() -> list[tuple[str, Table]]:
    """(SQLite file in the data directory, table), in the order they are copied."""
    from hato.pgstore.copy import Table

    return [
        (
            "users.db",
            Table(
                "accounts",
                "users",
                "users",
                ("address", "password_hash", "scram_salt", "scram_iterations",
                 "scram_stored_key", "scram_server_key"),
                ("address",),
            ),
        ),
        (
            "keys.db",
            Table(
                "keys",
                "keys",
                "keys",
                ("address", "local", "domain", "kind", "data", "fingerprint", "expires",
                 "algorithm", "wkd_hash", "imported"),
                ("address",),
            ),
        ),
        ("keys.db", Table("key policies", "policies", "key_policies", ("address", "policy"),
                          ("address",))),
        ("limits.db", Table("sending holds", "account", "send_accounts",
                            ("user", "held_until", "alerted_until"), ('"user"',))),
        # No natural key (one row per message sent): copied once per source, by mark.
        ("limits.db", Table("sending counts", "sent", "sent",
                            ("user", "minute", "recipients", "pending"), None, ("pending",))),
        ("reports.db", Table("dmarc report data", "dmarc", "report_dmarc", (*_DMARC, "count"),
                             _DMARC, ("dkim_aligned", "spf_aligned"))),
        ("reports.db", Table("tls report data", "tls", "report_tls", (*_TLS, "count"), _TLS)),
        ("reports.db", Table("reports sent", "sent", "report_sent", ("kind", "until"),
                             ("kind",))),
    ]  # fmt: skip


def register(actions: argparse._SubParsersAction[Any]) -> None:
    sub = actions.add_parser(
        "copy",
        help="copy the queue, accounts, keys, limits and report data between backends",
        description="Copy an installation's state between the SQLite files of its data "
        "directory and the PostgreSQL store ([store] dsn). Idempotent; needs the server stopped.",
    )
    sub.add_argument("--from", dest="source", choices=BACKENDS, required=True)
    sub.add_argument("--to", dest="target", choices=BACKENDS, required=True)
    sub.add_argument(
        "--init", action="store_true", help="create the data directory if it does not exist yet"
    )
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
    sub.set_defaults(handler=copy_command)


def copy_command(args: argparse.Namespace) -> int:
    from hato.cli.datadir import data_dir_of
    from hato.cli.options import load

    if args.source == args.target:
        raise CommandError("hato store copy: --from and --to must differ", EX_USAGE)
    loaded = load(args)
    settings = loaded.settings
    if settings.store.dsn is None:
        raise CommandError(
            "store.dsn: hato store copy needs the PostgreSQL store: set [store] backend = "
            '"postgresql" and dsn (the SQLite side is server.data_dir)',
            EX_CONFIG,
        )
    data_dir = data_dir_of(loaded, init=args.init and args.target == "sqlite")
    os.umask(0o077)  # what the copy makes (the SQLite files, spool files) is private
    with _locked(data_dir), _connected(settings) as conn:
        if args.source == "postgresql":
            refuse_live_nodes(conn)
        problems = _copy(conn, data_dir, to_pg=args.target == "postgresql")
    from hato.cli.audit import record
    from hato.model import logfmt

    record(loaded, logfmt("admin-store-copy", source=args.source, target=args.target,
                          problems=len(problems)))  # fmt: skip
    for problem in problems:
        print(f"hato: {problem}", file=sys.stderr)
    return EX_FAILURE if problems else 0


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with open(data_dir / "hato.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CommandError(
                f"server.data_dir: {data_dir} is in use by a running hato server; stop it "
                "first (the copy needs its source and destination quiet)",
                EX_TEMPFAIL,
            ) from None
        yield


@contextlib.contextmanager
def _connected(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    from hato.boot.process import StartupError
    from hato.boot.store import pg_settings, store_errors
    from hato.pgstore import check_schema, connect

    try:
        with store_errors(), connect(pg_settings(settings, "store-copy")) as conn:
            check_schema(conn)
            yield conn
    except StartupError as exc:
        raise CommandError(str(exc), exc.exit_code) from None


def refuse_live_nodes(conn: psycopg.Connection[Any]) -> None:
    """With PostgreSQL as the source, no node may be running on it."""
    from hato.pgstore.nodes import live_nodes

    live = live_nodes(conn)
    if live:
        raise CommandError(
            f"store: node(s) {', '.join(live)} run on the PostgreSQL store (heartbeat seen "
            "lately); stop every node first (the copy needs its source quiet)",
            EX_TEMPFAIL,
        )


def _copy(conn: psycopg.Connection[Any], data_dir: Path, *, to_pg: bool) -> list[str]:
    from hato.pgstore import copy as tablecopy
    from hato.queue import copy as queuecopy

    sqlite_source = f"sqlite:{socket.gethostname()}:{data_dir.resolve()}"
    pg_source = f"postgresql:{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    for name, table in tables():
        path = data_dir / name
        done: Copied
        if to_pg:
            if not path.exists():
                print(f"{table.item}: none ({path} does not exist)")
                continue
            done = tablecopy.file_to_pg(table, path, conn, sqlite_source)
        else:
            _make_sqlite(name, path)
            done = tablecopy.pg_to_file(table, conn, path, pg_source)
        print(done.line())
        sys.stdout.flush()
    queue = data_dir / "queue"
    moved = queuecopy.sqlite_to_pg(queue, conn) if to_pg else queuecopy.pg_to_sqlite(conn, queue)
    print(moved.line())
    return moved.problems


def _make_sqlite(name: str, path: Path) -> None:
    """The SQLite file `name` with its room's schema, made by that room (as the server would)."""
    if name == "users.db":
        from hato.accounts import UserStore

        users = UserStore(path)
        users.list()
        users.close()
    elif name == "keys.db":
        from hato.crypto import KeyStore

        KeyStore(path).close()
    elif name == "limits.db":
        from hato.policy.ratelimit import open_limits

        open_limits(path).close()
    elif name == "reports.db":
        from hato.reports import SqliteReportStore

        SqliteReportStore(path).close()
