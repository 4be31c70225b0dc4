"""``hato user add|remove|list|passwd``: the accounts in DATA_DIR/users.db.

A password comes from stdin: the first line without its newline, or, when stdin is a terminal,
typed twice at a getpass prompt. It is never taken from the command line (other users could
read it from the process list) and never printed.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hato.cli.errors import CommandError
from hato.cli.main import load

if TYPE_CHECKING:
    from hato.accounts import UserStore
    from hato.config import LoadedSettings
    from hato.model import Address

USERS_DB = "users.db"


def add(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _local_address(args.address, loaded)
    password = read_password(sys.stdin)
    from hato.accounts import UserExists

    with _store(loaded, create=True) as store:
        try:
            store.add(address, password)
        except UserExists:
            raise CommandError(
                f"{address} already exists; change its password with: hato user passwd {address}"
            ) from None
    print(f"added {address}")
    return 0


def passwd(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _parse_address(args.address)
    password = read_password(sys.stdin)
    from hato.accounts import UnknownUser

    with _store(loaded, create=False) as store:
        try:
            store.set_password(address, password)
        except UnknownUser:
            raise _no_such_user(address) from None
    print(f"changed the password of {address}")
    return 0


def remove(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _parse_address(args.address)
    with _store(loaded, create=False) as store:
        if not store.remove(address):
            raise _no_such_user(address)
    print(f"removed {address}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    loaded = load(args)
    if not _db_path(loaded).exists():
        return 0  # no account was ever added
    with _store(loaded, create=False) as store:
        for address in store.list():
            print(address)
    return 0


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


def _parse_address(text: str) -> Address:
    from hato.model import Address, AddressError

    try:
        return Address.parse(text)
    except AddressError as exc:
        raise CommandError(
            f'"{text}" is not an address ({exc}); write it as local@domain, e.g. alice@example.org'
        ) from None


def _local_address(text: str, loaded: LoadedSettings) -> Address:
    """`text` as an address of one of our [[domain]]s."""
    address = _parse_address(text)
    if not loaded.settings.is_local_domain(address.domain):
        local = ", ".join(d.name for d in loaded.settings.domains)
        raise CommandError(
            f"{address.domain} is not a local domain of {loaded.source} (local domains: "
            f'{local}); add a [[domain]] with name = "{address.domain}" first'
        )
    return address


def _no_such_user(address: Address) -> CommandError:
    return CommandError(f"no such user: {address} (see: hato user list)")


def _db_path(loaded: LoadedSettings) -> Path:
    return loaded.settings.server.data_dir / USERS_DB


@contextlib.contextmanager
def _store(loaded: LoadedSettings, *, create: bool) -> Iterator[UserStore]:
    """The user store in server.data_dir; `create` makes the directory if it is missing."""
    from hato.accounts import UserStore  # here, not on top: argon2 is slow to import

    path = _db_path(loaded)
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not path.exists():
            raise CommandError(f"no accounts yet: {path} does not exist (see: hato user add)")
        store = UserStore(path)
    except OSError as exc:
        raise CommandError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        yield store
    except (OSError, sqlite3.Error) as exc:
        raise CommandError(f"cannot use {path}: {exc}") from None
    finally:
        store.close()
