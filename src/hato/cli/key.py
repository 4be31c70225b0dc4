"""``hato key import|show|remove|policy|encrypt-existing|wkd-export``: users' public keys in
DATA_DIR/keys.db, and encryption of mail already in their Maildir.

Each change is logged (`admin-key-import|remove|policy|encrypt-existing user=...`: the key's
fingerprint, never the key; `admin-key-wkd-export`: the directory and how many files) in the
running server's log, else on stderr (hato.cli.audit).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.audit import record
from hato.cli.datadir import add_init_flag, data_dir_of
from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    from hato.config import LoadedSettings
    from hato.crypto import KeyStore, PublicKey
    from hato.model import Address


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the ``key`` command group (called by hato.cli.main.build_parser)."""
    from hato.cli.options import with_config

    key = commands.add_parser(
        "key", help="manage users' encryption keys", description="manage users' public keys"
    )
    actions = key.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        sub = with_config(actions.add_parser(name, help=help_text, description=help_text))
        sub.set_defaults(handler=handler)
        return sub

    sub = action("import", import_key, "store a user's public key (OpenPGP or S/MIME)")
    sub.add_argument("address", metavar="ADDRESS", help="local@domain")
    sub.add_argument("file", metavar="FILE", type=Path, help="the certificate ('-' for stdin)")
    add_init_flag(sub)
    action("show", show, "print a user's key").add_argument("address", metavar="ADDRESS")
    action("remove", remove, "delete a user's key").add_argument("address", metavar="ADDRESS")
    sub = action("policy", policy, "what to do when the user's key cannot be used")
    sub.add_argument("address", metavar="ADDRESS")
    sub.add_argument("policy", choices=("defer", "plaintext"), help="defer (default) or plaintext")
    sub = action("encrypt-existing", encrypt_existing, "encrypt the mail stored for a user")
    sub.add_argument("address", metavar="ADDRESS")
    sub = action("wkd-export", wkd_export, "write the Web Key Directory files")
    sub.add_argument("directory", metavar="DIR", type=Path)


def import_key(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _mailbox_address(args.address, loaded)
    from hato.crypto import KeyImportError, KeyRevoked
    from hato.model import logfmt

    data = _read(args.file)  # before the store: read as the caller, written as the server
    with _store(loaded, init=args.init) as store:
        try:
            key = store.import_key(data, address, _now())
        except KeyRevoked as exc:
            if store.revoke(exc.fingerprint, address, _now()) is None:
                raise CommandError(f"key not imported for {address}: {exc}") from None
            chosen = store.policy(address).value
            revoked = {"user": str(address), "fingerprint": exc.fingerprint}
            record(loaded, logfmt("admin-key-revoke", **revoked))
            print(f"the key {exc.fingerprint} of {address} is revoked: no mail is encrypted to it")
            print(f"any more; until a new key is imported, mail for {address} is: {chosen}")
            return 0
        except KeyImportError as exc:
            raise CommandError(f"key not imported for {address}: {exc}") from None
    fields = {"user": str(address), "kind": key.kind.value, "fingerprint": key.fingerprint}
    record(loaded, logfmt("admin-key-import", **fields))  # the fingerprint, never the key
    print(f"imported the {key.kind.value} key {key.fingerprint} for {address} (in {_db(loaded)})")
    print(f"mail for {address} is now stored encrypted (see: hato key encrypt-existing)")
    return 0


def show(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _address(args.address)
    with _store(loaded) as store:
        key = store.get(address)
        chosen = store.policy(address)
    if key is None:
        raise CommandError(f"no key for {address} (see: hato key import {address} FILE)")
    for line in _describe(key, chosen.value):
        print(line)
    return 0


def _describe(key: PublicKey, chosen: str) -> list[str]:
    from hato.crypto import KeyKind, advanced_url

    expires = f"{key.expires:%Y-%m-%d}" if key.expires else "never"
    if key.expired(_now()):
        expires += " (EXPIRED: mail follows the policy)"
    lines = [
        f"address:     {key.address}",
        f"type:        {key.kind.value} ({key.algorithm})",
        f"fingerprint: {key.fingerprint}",
        f"expires:     {expires}",
        f"on failure:  {chosen}",
    ]
    if key.kind is KeyKind.OPENPGP:
        lines.append(f"wkd:         {advanced_url(key.address)}")
    return lines


def remove(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _address(args.address)
    with _store(loaded) as store:
        if not store.remove(address):
            raise CommandError(f"no key for {address}")
    from hato.model import logfmt

    record(loaded, logfmt("admin-key-remove", user=str(address)))
    print(f"removed the key of {address} (from {_db(loaded)}); new mail is stored in the clear")
    return 0


def policy(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _mailbox_address(args.address, loaded)
    from hato.crypto import FailurePolicy

    with _store(loaded) as store:
        store.set_policy(address, FailurePolicy(args.policy))
    from hato.model import logfmt

    record(loaded, logfmt("admin-key-policy", user=str(address), policy=args.policy))
    print(f"when the key of {address} cannot be used, mail is: {args.policy}")
    return 0


def encrypt_existing(args: argparse.Namespace) -> int:
    loaded = load(args)
    address = _address(args.address)
    from hato.crypto import EncryptionError, encrypt_maildir

    with _store(loaded) as store:
        key = store.get(address)
    if key is None:
        raise CommandError(f"no key for {address} (see: hato key import {address} FILE)")
    lmtp = loaded.settings.lmtp_for(address.domain)
    if lmtp is not None:
        raise CommandError(
            f"the mailboxes of {address.domain} are behind the LMTP server {lmtp} "
            "([[transport]] lmtp): the mail already there is that server's to rewrite; new "
            "mail is encrypted before it is handed over"
        )
    mailbox = loaded.settings.mailboxes / address.domain.lower() / address.local.lower()
    if not mailbox.is_dir():
        raise CommandError(f"no mailbox for {address}: {mailbox} does not exist")
    try:
        result = encrypt_maildir(mailbox, key, now=_now())
    except (EncryptionError, OSError) as exc:
        raise CommandError(f"cannot encrypt the mail of {address}: {exc}") from None
    from hato.model import logfmt

    counts = {"encrypted": len(result.encrypted), "failed": len(result.failed)}
    record(loaded, logfmt("admin-key-encrypt-existing", user=str(address), **counts))
    print(
        f"{address}: {len(result.encrypted)} encrypted, {len(result.already)} already encrypted"
        f", {len(result.failed)} failed"
    )
    for name, why in result.failed:
        print(f"  not encrypted: {name}: {why}")
    return 1 if result.failed else 0


def wkd_export(args: argparse.Namespace) -> int:
    loaded = load(args)
    from hato.crypto.wkd import export_wkd

    with _store(loaded) as store:
        keys = store.list()
    try:
        written = export_wkd(keys, args.directory)
    except OSError as exc:
        raise CommandError(f"cannot write {args.directory}: {exc.strerror or exc}") from None
    from hato.model import logfmt

    record(loaded, logfmt("admin-key-wkd-export", directory=args.directory, files=len(written)))
    print(f"wrote {len(written)} files under {args.directory}")
    return 0


def _db(loaded: LoadedSettings) -> Path | str:
    """The key database a command used (issue 13: commands say which data directory)."""
    from hato.crypto import KEYS_DB

    if loaded.settings.store.backend == "postgresql":
        return "the PostgreSQL store"
    return Path(loaded.settings.server.data_dir) / KEYS_DB


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _read(path: Path) -> bytes:
    import sys

    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None


def _address(text: str) -> Address:
    from hato.cli.users import parse_address

    return parse_address(text)


def _local_address(text: str, loaded: LoadedSettings) -> Address:
    from hato.cli.users import _local_address as local

    return local(text, loaded)


def _mailbox_address(text: str, loaded: LoadedSettings) -> Address:
    """`text` as an address of ours whose mail is stored in its own mailbox: mail is encrypted
    to the key of the mailbox it is stored in (intake/protect.py), so a key for an alias, a
    +tag or a catch-all's address would never be used, and its mail stored in the clear."""
    from hato.cli.checks import mailboxes_of
    from hato.crypto.keystore import canonical

    address = _local_address(text, loaded)
    boxes = mailboxes_of(loaded.settings, address)
    if boxes and [canonical(box) for box in boxes] != [canonical(address)]:
        names = ", ".join(str(box) for box in boxes)
        raise CommandError(
            f"{address} is not a mailbox: its mail is stored in {names}, and encrypted to the "
            f"key of that mailbox; import the key for it (hato key import ADDRESS FILE, with "
            "a key whose user ID names that address)"
        )
    return address


@contextlib.contextmanager
def _store(loaded: LoadedSettings, *, init: bool = False) -> Iterator[KeyStore]:
    """The key store (DATA_DIR/keys.db or the shared PostgreSQL store), opened as the server's
    user (hato.cli.datadir)."""
    from hato.boot.store import open_keys
    from hato.cli.stores import store_errors, store_pool

    data_dir = data_dir_of(loaded, init=init)
    with store_pool(loaded) as pool, store_errors(f"the keys in {_db(loaded)}"):
        store = open_keys(data_dir, pool)
        try:
            yield store
        finally:
            store.close()
