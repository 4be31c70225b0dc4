"""What `hato check-config` checks beyond the file itself: the aliases against the accounts;
and, for `hato key import` and an offline `hato queue bounce`, the address book as the server
has it (which mailboxes an address's mail is stored in).

An alias target with no account of its own is a copy that bounces (directory.known); the
configuration is valid, but the operator wants to hear of it before the first mail does.
users.db is read, never created or changed (check-config may run as any user, before the
first `hato user add`); with [store] backend = "postgresql" the shared store's accounts are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hato.model import Address

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.directory.resolver import RecipientResolver

USERS_DB = "users.db"


class _Accounts:
    """The account addresses, read once."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._keys = keys

    def exists(self, address: Address) -> bool:
        return f"{address.local.lower()}@{address.domain.lower()}" in self._keys


def _account_keys(settings: Settings) -> frozenset[str]:
    """The canonical keys of every account, on whichever backend [store] names; raises
    StoreError (or StartupError: the shared store cannot be reached)."""
    from hato.accounts import canonical_key, read_account_keys

    if settings.store.backend != "postgresql":
        return read_account_keys(settings.server.data_dir / USERS_DB)
    from hato.boot.store import open_store_pool, open_users

    pool = open_store_pool(settings, "cli")
    try:
        users = open_users(settings, settings.server.data_dir, pool)
        return frozenset(canonical_key(address) for address in users.list())
    finally:
        if pool is not None:
            pool.close()


def dead_alias_targets(settings: Settings) -> list[str]:
    """One line per alias target that leads to no mailbox, naming the fix."""
    from hato.boot.process import StartupError
    from hato.model.storeerror import StoreError

    try:
        accounts = _Accounts(_account_keys(settings))
    except (StoreError, StartupError, OSError) as exc:
        return [f"cannot read the accounts: {exc}"]
    from hato.boot.build import build_resolver
    from hato.directory.resolver import Unknown

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


def resolver_of(settings: Settings) -> RecipientResolver:
    """The address book as the server has it (the accounts read once), for a command that
    must send mail where the server would; raises CommandError when they cannot be read."""
    from hato.boot.build import build_resolver
    from hato.boot.process import StartupError
    from hato.cli.errors import CommandError
    from hato.model.storeerror import StoreError

    try:
        return build_resolver(settings, _Accounts(_account_keys(settings)))
    except (StoreError, StartupError, OSError, ValueError) as exc:
        raise CommandError(f"cannot read the accounts and aliases: {exc}") from None


def mailboxes_of(settings: Settings, address: Address) -> tuple[Address, ...]:
    """The mailboxes mail to `address` is stored in, as the server resolves it at RCPT (none:
    no mailbox of ours takes it); raises CommandError when the accounts cannot be read."""
    from hato.directory.resolver import Local

    resolution = resolver_of(settings).resolve(address)
    return resolution.mailboxes if isinstance(resolution, Local) else ()
