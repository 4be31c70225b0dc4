"""The ``hato`` command line: serve, check-config, user, dkim, dns, key, queue, status, version;
and ``hato-sendmail`` (hato.cli.sendmail).

Talks to a running server only through its control socket; edits the user database directly.
Imports stay light at start-up: `hato-sendmail` runs once per message from cron and PHP, so this
package imports nothing itself, and each command imports what it needs.

Must not import anything of hato but config, accounts and app (and those lazily).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``hato`` command; returns the exit code (see hato.cli.main)."""
    from hato.cli.main import main as run

    return run(argv)


__all__ = ["main"]
