"""Exit codes, and the error a command raises to end with one clear line on stderr.

Must not import anything of hato.
"""

from __future__ import annotations

from collections.abc import Sequence

EX_FAILURE = 1
EX_USAGE = 2  # argparse's convention for a bad command line
EX_NOPERM = 77  # sysexits.h EX_NOPERM: the user may not do this (a file closed to it)
EX_CONFIG = 78  # sysexits.h EX_CONFIG: the configuration is wrong


class CommandError(Exception):
    """A command cannot do what was asked; `lines` say why and what to do instead."""

    def __init__(self, lines: str | Sequence[str], exit_code: int = EX_FAILURE) -> None:
        self.lines = (lines,) if isinstance(lines, str) else tuple(lines)
        self.exit_code = exit_code
        super().__init__("\n".join(self.lines))
