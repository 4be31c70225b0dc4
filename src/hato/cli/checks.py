"""What `hato check-config` checks beyond the file itself: the aliases against the accounts.

An alias target with no account of its own is a copy that bounces (directory.known); the
configuration is valid, but the operator wants to hear of it before the first mail does.
users.db is read, never created or changed (check-config may run as any user, before the
first `hato user add`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from hato.model import Address

if TYPE_CHECKING:
    from hato.config import Settings

USERS_DB = "users.db"


class _Accounts:
    """The account addresses of users.db, read once (read-only); none if there is no file."""

    def __init__(self, path: Path) -> None:
        self._addresses: frozenset[str] = frozenset()
        if not path.exists():
            return
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT address FROM users")
            self._addresses = frozenset(str(row[0]) for row in rows)
        except sqlite3.Error:
            pass  # no users table yet: no accounts
        finally:
            conn.close()

    def exists(self, address: Address) -> bool:
        return f"{address.local.lower()}@{address.domain.lower()}" in self._addresses


def dead_alias_targets(settings: Settings) -> list[str]:
    """One line per alias target that leads to no mailbox, naming the fix."""
    from hato.boot.build import build_resolver
    from hato.directory.resolver import Unknown

    try:
        accounts = _Accounts(settings.server.data_dir / USERS_DB)
    except sqlite3.Error as exc:
        return [f"{settings.server.data_dir / USERS_DB}: cannot read the accounts: {exc}"]
    try:
        resolver = build_resolver(settings, accounts)
    except (OSError, ValueError) as exc:  # the aliases file (AliasFileError is a ValueError)
        return [f"local.aliases_file: {exc}"]
    problems = []
    postmaster = settings.local.postmaster
    if postmaster is not None and isinstance(resolver.resolve(postmaster), Unknown):
        problems.append(
            f"local.postmaster: {postmaster} has no account, so mail to postmaster and root "
            f"bounces; add it (hato user add {postmaster}) or name another address"
        )
    return problems + [
        f"alias {alias}: target {target} has no account, so its copy bounces; "
        f"add it (hato user add {target}) or remove it from the alias"
        for alias, target in resolver.dead_alias_targets()
    ]
