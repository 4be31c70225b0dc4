"""The log of a command that changes something without the server (hato.cli.audit): one
`admin-*` line on stderr with the uid the command was started with, formatted as the server
formats its log ([server] log_format).

INVOKER is taken when this module is first imported: by hato.cli.main, before any command
becomes the data directory's owner (hato.cli.datadir), which would change os.getuid().

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hato.config import LoadedSettings

INVOKER = os.getuid()  # who ran the command, before it acts as the data directory's owner

log = logging.getLogger("hato.cli")


def stderr_log(loaded: LoadedSettings) -> Callable[[str], None]:
    """A log for what a command does without the server: each line with the invoking uid,
    formatted as the server logs its events ([server] log_format), on the command's stderr."""
    from hato.boot.logsetup import JsonFormatter, TextFormatter

    json_format = loaded.settings.server.log_format == "json"

    def write(line: str) -> None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        try:
            log.info(f"{line} uid={INVOKER}")
        finally:
            log.removeHandler(handler)

    return write
