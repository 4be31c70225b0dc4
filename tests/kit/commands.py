"""`hato` commands run in-process, as a user sees them: `run(capsys, *argv)` gives the exit
code, stdout and stderr, but for the `admin-*` line a change logs on stderr with no server
running (hato.cli.audit), which goes to ADMIN_LOG for the test to check (the line it must
give is its own assertion; tests/integration/test_admin_audit_log.py checks them end to end).
"""

from __future__ import annotations

import pytest

from hato.cli import main

ADMIN_LOG: list[str] = []
ADMIN_EVENT = " INFO hato.cli: event=" + "admin-"  # split: no event name to grep for


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit code, stdout and stderr (without its admin lines) of `hato ARGV`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.splitlines(keepends=True)
    admin = [line for line in lines if ADMIN_EVENT in line]
    ADMIN_LOG.extend(admin)
    return code, out, "".join(line for line in lines if line not in admin)
