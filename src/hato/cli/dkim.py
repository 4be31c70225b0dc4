"""``hato dkim keygen DOMAIN``: a DKIM signing key for one of our domains (RFC 6376, RFC 8463).

The private key is written to DATA_DIR/dkim/DOMAIN/SELECTOR.key (mode 0600, owned by the
server's user: started as root, the command writes it as that user); the TXT record to
publish is printed. The server signs with the key of each domain's `dkim_selector` (default
"hato") once the file exists (at the next start or `hato reload`: a reload reads the keys
again). Rotation: make a key with a new selector, publish its record, wait for DNS, set
`dkim_selector` to it and run `hato reload`; keep the old record published a few days for
mail still in transit. The new key is logged (`admin-dkim-keygen`: domain, selector,
algorithm, file; never the key) in the running server's log, else on stderr
(hato.cli.audit).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hato.cli.audit import record
from hato.cli.datadir import add_init_flag, data_dir_of
from hato.cli.errors import CommandError
from hato.cli.options import load


def keygen(args: argparse.Namespace) -> int:
    loaded = load(args)
    settings = loaded.settings
    domain = settings.domain(args.domain)
    if domain is None:
        raise CommandError(
            f"{args.domain} is not a local domain of {loaded.source}; add a [[domain]] first"
        )
    selector = (args.selector or domain.dkim_selector).lower()
    from hato.authcheck import DkimAlgorithm, generate_key

    algorithm = (
        DkimAlgorithm.ED25519_SHA256 if args.algorithm == "ed25519" else DkimAlgorithm.RSA_SHA256
    )
    data_dir = data_dir_of(loaded, init=args.init)  # as the server's user: it must read the key
    path = data_dir / "dkim" / domain.name.lower() / f"{selector}.key"
    replaced = path.exists()
    if replaced and not args.force:
        raise CommandError(f"{path} exists; pick another --selector (rotation) or add --force")
    private_pem, txt = generate_key(algorithm)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    from hato.model import logfmt

    facts = {"domain": domain.name, "selector": selector, "algorithm": args.algorithm}
    record(loaded, logfmt("admin-dkim-keygen", **facts, path=path, replaced=replaced))
    print(f"wrote {path}")
    print("publish this TXT record:")
    # RFC 1035 §3.3.14 / RFC 6376 §3.6.2.2: one TXT string holds at most 255 octets; longer
    # values (2048-bit RSA keys) are several strings, which verifiers join.
    strings = " ".join(f'"{txt[i : i + 250]}"' for i in range(0, len(txt), 250))
    print(f"{selector}._domainkey.{domain.name}. IN TXT {strings}")
    if selector != domain.dkim_selector:
        print(
            f'then set dkim_selector = "{selector}" in [[domain]] {domain.name} and run hato reload'
        )
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    dkim = commands.add_parser("dkim", help="DKIM signing keys", description="DKIM signing keys")
    actions = dkim.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub = actions.add_parser(
        "keygen", help="make a signing key for a domain", description="make a signing key"
    )
    sub.set_defaults(handler=keygen)
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("--selector", help="the DKIM selector (default: the domain's dkim_selector)")
    sub.add_argument(
        "--algorithm",
        choices=("ed25519", "rsa"),
        default="rsa",
        help="rsa (2048 bits, understood everywhere) or ed25519 (RFC 8463)",
    )
    sub.add_argument("--force", action="store_true", help="overwrite an existing key file")
    add_init_flag(sub)
    sub.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the configuration file (default: ./hato.toml, else the embedded default)",
    )
