"""``hato user add|remove|list|passwd``: the accounts in DATA_DIR/users.db.

A password comes from stdin: the first line without its newline, or, when stdin is a terminal,
typed twice at a getpass prompt. It is never taken from the command line (other users could
read it from the process list) and never printed. A weak one (hato.accounts.passwords: under 12
characters, a common password, the address itself) is refused unless --allow-weak is given.
The data directory must exist (`user add --init` makes it); every command names the one it used.
Each change is logged (`admin-user-add|passwd|remove user=...`, never the password) in the
running server's log, else on stderr (hato.cli.audit).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hato.cli.audit import record
from hato.cli.datadir import data_dir_of
from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    from hato.accounts import UserStore
    from hato.config import LoadedSettings
    from hato.model import Address

USERS_DB = "users.db"


def add(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _local_address(args.address, loaded)
    password = checked(read_password(sys.stdin), address, allow_weak=args.allow_weak)
    from hato.accounts import UserExists
    from hato.model import logfmt

    with _store(loaded, create=True, init=args.init) as store:
        try:
            store.add(address, password)
        except UserExists:
            raise CommandError(
                f"{address} already exists; change its password with: hato user passwd {address}"
            ) from None
    record(loaded, logfmt("admin-user-add", user=str(address)))  # never the password
    print(f"added {address} (in {_db_path(loaded)})")
    return 0


def passwd(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = parse_address(args.address)
    password = checked(read_password(sys.stdin), address, allow_weak=args.allow_weak)
    from hato.accounts import UnknownUser
    from hato.model import logfmt

    with _store(loaded, create=False) as store:
        try:
            store.set_password(address, password)
        except UnknownUser:
            raise _no_such_user(address, loaded) from None
    record(loaded, logfmt("admin-user-passwd", user=str(address)))  # never the password
    print(f"changed the password of {address} (in {_db_path(loaded)})")
    return 0


def remove(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = parse_address(args.address)
    from hato.model import logfmt

    with _store(loaded, create=False) as store:
        if not store.remove(address):
            raise _no_such_user(address, loaded)
    record(loaded, logfmt("admin-user-remove", user=str(address)))
    print(f"removed {address} (from {_db_path(loaded)})")
    return 0


def list_users(args: argparse.Namespace) -> int:
    loaded = load(args)
    data_dir_of(loaded, write=False)  # refuses a data directory that does not exist
    path = _db_path(loaded)
    if isinstance(path, Path) and not path.exists():
        print(f"hato: no accounts yet in {_db_path(loaded)}", file=sys.stderr)
        return 0
    with _store(loaded, create=False) as store:
        for address in store.list():
            print(address)
    return 0


def checked(password: str, address: Address, *, allow_weak: bool) -> str:
    """`password`, unless it is weak and --allow-weak was not given."""
    from hato.accounts.passwords import weakness

    why = weakness(password, address)
    if why is not None and not allow_weak:
        raise CommandError(
            f"password refused: {why}; nothing was changed (a passphrase of a few unrelated "
            "words is easy to type and hard to guess; --allow-weak accepts it anyway)"
        )
    return password


def read_password(stdin: TextIO) -> str:
    """The new password: stdin's first line, or typed twice when stdin is a terminal."""
    try:
        if stdin.isatty():
            password = getpass.getpass("New password: ")
            if getpass.getpass("Repeat the password: ") != password:
                raise CommandError("the two passwords differ; nothing was changed")
        else:
            password = stdin.readline().removesuffix("\n").removesuffix("\r")
    except (EOFError, UnicodeDecodeError):
        raise CommandError("could not read a password from stdin") from None
    if not password:
        raise CommandError("the password must not be empty (give it as the first line of stdin)")
    return password


def parse_address(text: str) -> Address:
    from hato.model import Address, AddressError

    try:
        return Address.parse(text)
    except AddressError as exc:
        raise CommandError(
            f'"{text}" is not an address ({exc}); write it as local@domain, e.g. alice@example.org'
        ) from None


def _local_address(text: str, loaded: LoadedSettings) -> Address:
    """`text` as an address of one of our [[domain]]s."""
    address = parse_address(text)
    if not loaded.settings.is_local_domain(address.domain):
        local = ", ".join(d.name for d in loaded.settings.domains)
        raise CommandError(
            f"{address.domain} is not a local domain of {loaded.source} (local domains: "
            f'{local}); add a [[domain]] with name = "{address.domain}" first'
        )
    return address


def _no_such_user(address: Address, loaded: LoadedSettings) -> CommandError:
    return CommandError(f"no such user in {_db_path(loaded)}: {address} (see: hato user list)")


def _db_path(loaded: LoadedSettings) -> Path | str:
    """Where the accounts are, for messages: DATA_DIR/users.db, or the PostgreSQL store."""
    if loaded.settings.store.backend == "postgresql":
        return "the PostgreSQL store"
    return loaded.settings.server.data_dir / USERS_DB


@contextlib.contextmanager
def _store(loaded: LoadedSettings, *, create: bool, init: bool = False) -> Iterator[UserStore]:
    """The user store in server.data_dir (or the PostgreSQL store), opened as the server's
    user; `create` makes the database if it is missing, `init` the data directory too."""
    from hato.boot.store import open_users  # here, not on top: argon2 is slow to import
    from hato.cli.stores import store_errors, store_pool

    where = _db_path(loaded)
    if isinstance(where, Path):  # DATA_DIR/users.db
        data_dir_of(loaded, init=init)
        if not create and not where.exists():
            raise CommandError(f"no accounts yet: {where} does not exist (see: hato user add)")
    with store_pool(loaded) as pool, store_errors(str(where)):
        store = open_users(loaded.settings, loaded.settings.server.data_dir, pool)
        try:
            yield store
        finally:
            store.close()
