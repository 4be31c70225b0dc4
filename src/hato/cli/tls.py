"""``hato tls renew``: have the running server order a certificate from its ACME server now
([tls] acme), and swap it into every listener; prints the new certificate's serial.

Exit codes: 0 renewed; 1 the order failed (the line says why; the old certificate stays);
75 (EX_TEMPFAIL) no server answers.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hato.cli.errors import CommandError
from hato.cli.queue import SOCKET_NAME, ControlClient, ServerDown, check

EX_TEMPFAIL = 75  # sysexits.h: the server is not running; try again later
RENEW_TIMEOUT = 300.0  # an order waits for validation and issuance (acme/client.py: 180 s)


def renew(args: argparse.Namespace) -> int:
    from hato.cli.options import load

    loaded = load(args)
    path = Path(loaded.settings.server.data_dir) / SOCKET_NAME
    try:
        with ControlClient(path, timeout=RENEW_TIMEOUT) as client:
            facts = check(client.request({"op": "tls.renew"}))["certificate"]
    except ServerDown as exc:
        raise CommandError(f"no server answers on {exc}; start it first", EX_TEMPFAIL) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    print(
        f"renewed: serial {facts['serial']}, issuer {facts['issuer']}, until {facts['not_after']}"
    )
    return 0


def register(commands: Any) -> None:
    from hato.cli.options import with_config

    tls = commands.add_parser("tls", help="TLS certificates", description="TLS certificates")
    actions = tls.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_text = "order a certificate from the ACME server now ([tls] acme) and use it"
    sub = actions.add_parser("renew", help=help_text, description=help_text)
    with_config(sub).set_defaults(handler=renew)
