"""The ``hato`` command: argument parsing, dispatch, and errors as one line each on stderr.

Start-up time matters (``hato-sendmail`` will share this package), so only argparse and the
stdlib are imported here; each handler imports what it needs (config, accounts, app) itself.

Exit codes: 0 done; 1 the command failed (bad address, unknown user; in check-config: the
file is invalid, or `serve` would stop or break mail: a file the server's user cannot read, a
data directory it cannot write, a certificate that does not match its key; warnings alone
exit 0); 2 bad usage; 75 (`reload`, `queue`) no server answers when one must; 78 EX_CONFIG
(sysexits.h) when the configuration cannot be used.

Must not import anything of hato at module level but hato.cli; the commands are imported when
the parser is built, and none of them imports this module (shared: hato.cli.options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from hato import __version__
from hato.cli import stderrlog  # noqa: F401  (takes the invoking uid before a command changes it)
from hato.cli.errors import EX_FAILURE, EX_NOPERM, EX_USAGE, CommandError
from hato.cli.options import load, with_config

if TYPE_CHECKING:
    from hato.config import Settings

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command line argparse cannot use."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block, and no SystemExit in the middle of main().
        raise UsageError(f"{self.prog}: {message} (see: {self.prog} --help)")


def _serve(args: argparse.Namespace) -> int:
    loaded = load(args)
    from hato.boot.supervisor import serve  # the whole server: only for `hato serve`

    return serve(loaded.settings, source=loaded.source)


def _check_config(args: argparse.Namespace) -> int:
    loaded = load(args, exit_code=EX_FAILURE)
    from hato.cli.checks import dead_alias_targets
    from hato.cli.preflight import preflight

    found = preflight(loaded.settings)  # what serve checks, as the server's user
    problems = found.problems + dead_alias_targets(loaded.settings)
    print(f"{loaded.source}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    for line in summary(loaded.settings):
        print(f"  {line}")
    for line in problems:
        print(f"hato: {line}", file=sys.stderr)
    for line in found.warnings:
        print(f"hato: warning: {line}", file=sys.stderr)
    return EX_FAILURE if problems else 0


def summary(settings: Settings) -> list[str]:
    """What a configuration amounts to, in a few lines for a human."""
    domains = ", ".join(
        d.name
        + (" (any local part)" if d.accept_any else "")
        + (f" (mailboxes behind LMTP {lmtp})" if (lmtp := settings.lmtp_for(d.name)) else "")
        for d in settings.domains
    )
    listeners = ", ".join(f"{lst.role.value} {lst.address}" for lst in settings.listeners)
    lines = [
        f"hostname:  {settings.server.hostname}",
        f"data dir:  {settings.server.data_dir}",
        f"listeners: {listeners}",
        f"domains:   {domains}",
    ]
    if settings.tls is not None:
        tls_from = settings.tls.cert if settings.tls.acme is None else settings.tls.acme.directory
        lines.append(f"tls:       {tls_from}")
    if settings.local.postmaster is not None:
        lines.append(f"postmaster: {settings.local.postmaster} (also root, abuse, MAILER-DAEMON)")
    else:
        first = settings.domains[0].name
        lines.append(
            f"postmaster: an alias or account postmaster@{first}, else its own mailbox "
            "(set [local] postmaster to your address)"
        )
    if settings.rspamd is not None:
        roles = ", ".join(role.value for role in settings.rspamd.roles)
        lines.append(
            f"rspamd:    {settings.rspamd.url} for {roles} "
            f"(unreachable: {settings.rspamd.on_failure.value})"
        )
    if settings.screen.active:
        lines.append(f"screen:    {settings.screen.summary()}")
    return lines


def _version(args: argparse.Namespace) -> int:
    print(f"hato {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hato.cli import dkim, dnsrecords, doctor, users

    parser = _Parser(prog="hato", description="Hato, a mail server.")
    parser.add_argument("--version", action="version", version=f"hato {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    with_config(command("serve", _serve, "run the mail server until SIGTERM"))
    with_config(command("check-config", _check_config, "validate the configuration"))
    command("version", _version, "print the version")

    dkim.register(commands)
    dnsrecords.register(commands)
    doctor.register(commands)
    user = commands.add_parser("user", help="manage the accounts", description="manage accounts")
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, help_text, takes_address in (
        ("add", users.add, "create an account (password on stdin)", True),
        ("remove", users.remove, "delete an account", True),
        ("list", users.list_users, "print every account, one per line", False),
        ("passwd", users.passwd, "change a password (password on stdin)", True),
    ):
        sub = with_config(actions.add_parser(name, help=help_text, description=help_text))
        sub.set_defaults(handler=handler)
        if takes_address:
            sub.add_argument("address", metavar="ADDRESS", help="local@domain")
        if name in ("add", "passwd"):
            sub.add_argument(
                "--allow-weak",
                action="store_true",
                help="accept a password under 12 characters or on the common-passwords list",
            )
        if name == "add":
            from hato.cli.datadir import add_init_flag

            add_init_flag(sub)
    from hato.cli import holds

    for name, handler, help_text in (
        ("held", holds.held, "print the users held after a sending spike, and until when (UTC)"),
        ("release", holds.release, "let a held user send again (resets their spike count)"),
        ("blocked", holds.blocked, "print the clients blocked for failed AUTHs, and until when"),
        ("unblock", holds.unblock, "let a client blocked for failed AUTHs log in again"),
    ):
        sub = with_config(actions.add_parser(name, help=help_text, description=help_text))
        sub.set_defaults(handler=handler)
        if name == "release":
            sub.add_argument("address", metavar="ADDRESS", help="local@domain")
        if name == "unblock":
            sub.add_argument(
                "client", metavar="CLIENT", help="its IP address, or the IPv6 /64 listed"
            )

    from hato.cli import dovecot, key

    key.register(commands)
    dovecot.register(commands)
    from hato.cli import queue, reload, status, tls

    queue.register(commands)
    status.register(commands)
    reload.register(commands)
    tls.register(commands)
    from hato.cli import report, spam, store

    spam.register(commands)
    store.register(commands)
    report.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``hato`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    except SystemExit as exc:  # --help and --version end here
        return exc.code if isinstance(exc.code, int) else 0
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        for line in exc.lines:
            print(f"hato: {line}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        # Any local user may start `hato`; the data directory (0700, or 0711 for the maildrop)
        # and the control socket (0600) are closed to all but root and the server's user. One
        # line naming the file, as for every other refusal, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"hato: {where}{exc.strerror or exc}; run it as root or as the server's user",
            file=sys.stderr,
        )
        return EX_NOPERM
    except KeyboardInterrupt:
        print("hato: interrupted", file=sys.stderr)
        return 130
