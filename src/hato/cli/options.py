"""The ``--config FILE`` option the commands take, and the settings it names.

Every command module imports these from here; hato.cli.main imports the commands (never the
other way round), so the package has no import cycle. Must not import anything of hato at
module level but hato.cli.errors (config is loaded lazily: start-up time).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hato.cli.errors import EX_CONFIG, CommandError

if TYPE_CHECKING:
    from hato.config import LoadedSettings


def load(args: argparse.Namespace, *, exit_code: int = EX_CONFIG) -> LoadedSettings:
    """The settings for this command (--config, ./hato.toml or the embedded default)."""
    from hato.config import ConfigError, load_settings  # here, not on top: start-up time

    try:
        return load_settings(args.config, env=os.environ, cwd=Path.cwd())
    except ConfigError as exc:
        raise CommandError(exc.lines(), exit_code) from None


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` the --config option that `load` reads."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
    return parser
