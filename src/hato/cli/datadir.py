"""The data directory a command works in: never made by accident, always written to as the
server's user.

`hato user add` run in the wrong directory used to make a fresh ./hato-data and say "added";
the server never saw the account. Now a command that manages a data directory uses only one
that exists (the server makes it at its first start), unless given --init; and it says which
one it used. Started as root, it becomes the server's user before writing (hato.boot.owner).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hato.cli.errors import CommandError

if TYPE_CHECKING:
    from hato.config import LoadedSettings


def add_init_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        action="store_true",
        help="create the data directory if it does not exist yet (else: refuse)",
    )


def data_dir_of(loaded: LoadedSettings, *, init: bool = False, write: bool = True) -> Path:
    """The existing data directory of `loaded` (made when `init`); as its owner when `write`."""
    from hato.boot.owner import OwnerError, act_as, create_data_dir, server_owner

    settings = loaded.settings
    data_dir = Path(settings.server.data_dir)
    try:
        owner = server_owner(settings.server.user, settings.server.group, data_dir)
        if not data_dir.is_dir():
            if not init:
                raise CommandError(missing(loaded))
            create_data_dir(data_dir, owner)
            print(f"created the data directory {data_dir}")
        if write:
            act_as(owner, data_dir)
    except OwnerError as exc:
        raise CommandError(str(exc)) from None
    return data_dir


def missing(loaded: LoadedSettings) -> str:
    settings = loaded.settings
    return (
        f"no data directory {settings.server.data_dir} ({settings.data_dir_origin}; "
        f"configuration: {loaded.source}); nothing was changed. Use the server's: --config FILE "
        "(its server.data_dir) or HATO_HOME; or add --init to create this one"
    )
