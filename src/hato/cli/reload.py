"""``hato reload``: have the running server read its configuration again, and say what came of
it (boot.reload: every changed key applied, or none).

Asks over the control socket, which answers once the reload is done. Exit codes: 0 applied;
1 refused (keys that need a restart, or errors in the file: the lines say which, and nothing
was applied; a file with errors is still sent to the server, found by its data_dir, which
keeps what is in force and logs why); 75 (EX_TEMPFAIL) no server answers; 78 a file so broken
that its server cannot be found (not TOML). systemd's ExecReload runs it, so
`systemctl reload hato` fails when the reload did.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hato.cli.errors import EX_CONFIG, EX_FAILURE, CommandError
from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown, check

EX_TEMPFAIL = 75  # sysexits.h: the server is not running; try again later


def reload(args: argparse.Namespace) -> int:
    import os

    from hato.config import ConfigError, data_dir_despite_errors, load_settings

    try:
        data_dir = Path(
            load_settings(args.config, env=os.environ, cwd=Path.cwd()).settings.server.data_dir
        )
    except ConfigError as exc:
        # The running server is asked all the same: it refuses the file, keeps what is in
        # force and logs why (event=reload-refused); its answer names the errors.
        found = data_dir_despite_errors(args.config, env=os.environ, cwd=Path.cwd())
        if found is None:
            unknown = "no server was asked (the file does not say where its data directory is)"
            raise CommandError([*exc.lines(), unknown], EX_CONFIG) from None
        data_dir = found
    path = data_dir / SOCKET_NAME
    try:
        with ControlClient(path, timeout=60.0) as client:
            outcome = check(client.request({"op": "reload"}))["reload"]
    except ServerDown as exc:
        raise CommandError(f"no server answers on {exc}; nothing to reload", EX_TEMPFAIL) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    return report(outcome)


def report(outcome: dict[str, Any]) -> int:
    source = outcome.get("source", "?")
    changed = ", ".join(outcome.get("changed", [])) or "nothing"
    if outcome.get("applied"):
        print(f"reloaded {source}: changed {changed}")
        return 0
    print(f"hato: reload refused, nothing of {source} was applied:", file=sys.stderr)
    for line in outcome.get("errors", []):
        print(f"hato:   {line}", file=sys.stderr)
    restart = outcome.get("restart", [])
    if restart:
        print(
            f"hato:   these keys need a restart: {', '.join(restart)} (systemctl restart hato)",
            file=sys.stderr,
        )
    return EX_FAILURE


def register(commands: Any) -> None:
    from hato.cli.options import with_config

    sub = commands.add_parser(
        "reload",
        help="have the running server read its configuration again; prints the outcome",
        description="have the running server read its configuration again",
    )
    with_config(sub).set_defaults(handler=reload)
