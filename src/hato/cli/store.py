"""``hato store migrate``: bring the shared PostgreSQL store to this Hato's schema.

Run once, from any node, before starting the new version's servers (they refuse to start
against another schema version, saying so). Idempotent: a second run applies nothing. With
[store] backend = "sqlite" there is nothing to migrate (the SQLite files migrate themselves).
What it applied is logged (`admin-store-migrate`, hato.cli.audit), as `store copy` is
(`admin-store-copy`).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hato.cli import storecopy
from hato.cli.errors import CommandError


def register(commands: argparse._SubParsersAction[Any]) -> None:
    store = commands.add_parser(
        "store", help="the shared store ([store])", description="the shared store ([store])"
    )
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub = actions.add_parser(
        "migrate",
        help="apply the PostgreSQL schema migrations this Hato needs",
        description="Apply the PostgreSQL schema migrations this Hato needs (idempotent).",
    )
    sub.set_defaults(handler=migrate_command)
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
    storecopy.register(actions)


def migrate_command(args: argparse.Namespace) -> int:
    from hato.boot.process import StartupError
    from hato.boot.store import pg_settings, store_errors
    from hato.cli.options import load

    loaded = load(args)
    settings = loaded.settings
    if settings.store.backend != "postgresql":
        print("store: backend is sqlite: nothing to migrate")
        return 0
    from hato.pgstore import SCHEMA_VERSION, connect, migrate

    try:
        with store_errors(), connect(pg_settings(settings, "migrate")) as conn:
            applied = migrate(conn)
    except StartupError as exc:
        raise CommandError(str(exc), exc.exit_code) from None
    if applied:
        from hato.cli.audit import record
        from hato.model import logfmt

        versions = ",".join(str(version) for version, _ in applied)
        record(loaded, logfmt("admin-store-migrate", applied=versions, schema=SCHEMA_VERSION))
    for version, description in applied:
        print(f"applied migration {version}: {description}")
    print(f"store: schema version {SCHEMA_VERSION}" + ("" if applied else " (already)"))
    sys.stdout.flush()
    return 0
