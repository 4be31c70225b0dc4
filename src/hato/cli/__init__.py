"""The ``hato`` command line: serve, check-config, user add/remove/list/passwd, version.

Talks to a running server only through its control socket; edits the user database directly.
Imports stay light at start-up: config, accounts and app are imported by the command needing them.

Must not import anything of hato but config, accounts and app (and those lazily).
"""

from hato.cli.main import main

__all__ = ["main"]
