"""``hato dovecot-auth`` and ``hato dovecot-config``: Dovecot serves IMAP for Hato's Maildirs.

Theory of operation. Hato writes the Maildirs; Dovecot reads them over IMAP as the mailbox owner
(``[local] mailbox_owner``, e.g. ``vmail``; Dovecot refuses uid 0). A user has one password for
submission and IMAP: Dovecot's passdb is ``checkpassword`` running ``hato dovecot-auth``, which
checks the password against users.db with the same argon2id verification as SMTP AUTH (no hash
is exported, so ``hato user passwd`` takes effect at once). ``hato dovecot-config`` prints a
complete configuration for all this.

The checkpassword interface (https://cr.yp.to/checkpwd/interface.html, as Dovecot uses it):
file descriptor 3 holds ``user NUL password NUL ...``; on success the program sets USER to the
canonical name and runs the program named by its remaining arguments (Dovecot's
checkpassword-reply); exit 1 is a wrong password or an unknown user, 111 a temporary failure
(users.db cannot be read), 2 a misuse.

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    from hato.config import Settings

CHECKPASSWORD_FAILED = 1
CHECKPASSWORD_MISUSE = 2
CHECKPASSWORD_TEMPFAIL = 111
_MAX_INPUT = 512  # the interface's limit on what fd 3 holds
USERS_DB = "users.db"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``dovecot-auth`` and ``dovecot-config`` (called by hato.cli.main.build_parser)."""
    from hato.cli.options import with_config

    help_text = "check an IMAP login for Dovecot (its checkpassword passdb)"
    auth = with_config(commands.add_parser("dovecot-auth", help=help_text, description=help_text))
    auth.add_argument("reply", nargs=argparse.REMAINDER, help="what to run on success")
    auth.set_defaults(handler=dovecot_auth)
    help_text = "print a Dovecot configuration serving Hato's Maildirs over IMAP"
    conf = with_config(commands.add_parser("dovecot-config", help=help_text, description=help_text))
    conf.add_argument("--listen", default="*, ::", help="addresses for IMAP (default: all)")
    conf.add_argument("--imap-port", type=int, default=143, help="IMAP with STARTTLS (143)")
    conf.add_argument("--imaps-port", type=int, default=993, help="IMAP over TLS (993; 0: off)")
    conf.set_defaults(handler=dovecot_config)


def dovecot_auth(args: argparse.Namespace) -> int:
    """checkpassword: exit 1 for a wrong login; exec the reply program for a right one."""
    try:
        with os.fdopen(3, "rb", closefd=False) as handle:
            data = handle.read(_MAX_INPUT)
    except OSError:
        print(
            "hato dovecot-auth: nothing on fd 3 (run by Dovecot's checkpassword)", file=sys.stderr
        )
        return CHECKPASSWORD_MISUSE
    parts = data.split(b"\0")
    if len(parts) < 2 or not args.reply:
        return CHECKPASSWORD_MISUSE
    try:
        user, password = parts[0].decode("utf-8"), parts[1].decode("utf-8")
    except UnicodeDecodeError:
        return CHECKPASSWORD_FAILED
    try:
        settings = load(args).settings
    except CommandError as exc:
        print(f"hato dovecot-auth: {' '.join(exc.lines)}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    from hato.accounts import UserStore
    from hato.model import Address, AddressError

    try:
        address = Address.parse(user)
    except AddressError:
        return CHECKPASSWORD_FAILED
    database = Path(settings.server.data_dir) / USERS_DB
    if not database.is_file():
        print(f"hato dovecot-auth: {database}: no such file", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    store = UserStore(database, scram_iterations=settings.auth.stored_scram_iterations)
    try:
        if not store.verify(address, password):
            return CHECKPASSWORD_FAILED
    except Exception as exc:
        print(f"hato dovecot-auth: {database}: {exc}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    finally:
        store.close()
    os.environ["USER"] = f"{address.local.lower()}@{address.domain.lower()}"
    os.execvp(args.reply[0], args.reply)


def dovecot_config(args: argparse.Namespace) -> int:
    settings = load(args).settings
    print(render(settings, args.config, args.listen, args.imap_port, args.imaps_port), end="")
    return 0


def render(
    settings: Settings, config: Path | None, listen: str, imap_port: int, imaps_port: int
) -> str:
    """The dovecot.conf text (see docs/operations.md, Dovecot)."""
    owner_name = settings.local.mailbox_owner
    if owner_name is None:
        raise CommandError(
            "local.mailbox_owner: not set; Dovecot needs the mail to belong to a user of its own: "
            'add [local] mailbox_owner = "vmail" (useradd --system vmail), restart hato and '
            f"chown -R vmail: {settings.mailboxes}"
        )
    owner = pwd.getpwnam(owner_name)
    hato = shutil.which("hato") or str(Path(sys.executable).with_name("hato"))
    conf = f" --config {Path(config).resolve()}" if config is not None else ""
    # The checkpassword program reads users.db: it runs as users.db's owner (the auth
    # process's user; Dovecot's own default user cannot read Hato's data directory).
    auth_user = _owner_name(Path(settings.server.data_dir) / USERS_DB)
    lines = [
        "# Dovecot serving Hato's Maildirs over IMAP (printed by `hato dovecot-config`).",
        "protocols = imap",
        f"listen = {listen}",
        f"mail_location = maildir:{settings.mailboxes}/%Ld/%Ln",
        f"first_valid_uid = {owner.pw_uid}",
        f"last_valid_uid = {owner.pw_uid}",
        "auth_mechanisms = plain login",
        "passdb {",
        "  driver = checkpassword",
        f"  args = {hato} dovecot-auth{conf}",
        "}",
        "userdb {",
        "  driver = static",
        f"  args = uid={owner.pw_uid} gid={owner.pw_gid} "
        f"home={settings.mailboxes}/%Ld/%Ln allow_all_users=yes",
        "}",
        "service auth {",
        f"  user = {auth_user}",
        "}",
        "namespace inbox {",
        "  inbox = yes",
        "  separator = /",
        "  mailbox Junk {",
        "    special_use = \\Junk",
        "    auto = subscribe",
        "  }",
        "}",
        "service imap-login {",
        "  inet_listener imap {",
        f"    port = {imap_port}",
        "  }",
    ]
    tls = _tls_lines(settings)
    if "ssl = no" in tls:
        imaps_port = 0
    lines += ["  inet_listener imaps {", f"    port = {imaps_port}", "    ssl = yes", "  }", "}"]
    lines += tls
    return "\n".join(lines) + "\n"


def _tls_lines(settings: Settings) -> list[str]:
    if settings.tls is not None and settings.tls.cert is not None and settings.tls.key is not None:
        cert, key = settings.tls.cert, settings.tls.key
    elif settings.tls is not None:  # [tls] acme keeps its files here (hato.acme.store)
        acme = Path(settings.server.data_dir) / "acme"
        cert, key = acme / "cert.pem", acme / "key.pem"
    else:  # the self-signed certificate Hato makes for itself (hato.server.tls), if any
        tls = Path(settings.server.data_dir) / "tls"
        cert, key = tls / "selfsigned-cert.pem", tls / "selfsigned-key.pem"
        if not cert.exists():
            return [
                "# No [tls] in hato.toml: IMAP without TLS, passwords only from loopback.",
                "ssl = no",
            ]
    # Passwords only over TLS (or on loopback): Dovecot's disable_plaintext_auth default.
    return ["ssl = yes", f"ssl_cert = <{cert}", f"ssl_key = <{key}"]


def _owner_name(path: Path) -> str:
    try:
        uid = path.stat().st_uid
    except OSError:
        uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
