"""``hato dovecot-auth`` and ``hato dovecot-config``: Dovecot serves IMAP for Hato's Maildirs.

Theory of operation. Hato writes the Maildirs; Dovecot reads them over IMAP as the mailbox owner
(``[local] mailbox_owner``, e.g. ``vmail``; Dovecot refuses uid 0). A user has one password for
submission and IMAP: Dovecot's passdb is ``checkpassword`` running ``hato dovecot-auth``, which
checks the password against the accounts ``hato user`` edits (users.db, or the shared PostgreSQL
store's ``users`` table with [store] backend = "postgresql", so that a user added on one node
logs in over IMAP on every node) with the same argon2id verification as SMTP AUTH (no hash is
exported, so ``hato user passwd`` takes effect at once). ``hato dovecot-config`` prints a
complete configuration for all this.

The checkpassword interface (https://cr.yp.to/checkpwd/interface.html, as Dovecot uses it):
file descriptor 3 holds ``user NUL password NUL ...``; on success the program sets USER to the
canonical name and runs the program named by its remaining arguments (Dovecot's
checkpassword-reply); exit 1 is a wrong password or an unknown user, 111 a temporary failure
(the accounts cannot be read: users.db missing or unreadable, the PostgreSQL store down or
refusing, a configuration that does not load), 2 a misuse. A failure of the store is never
exit 1: Dovecot would tell the user the password is wrong (and an uncaught exception exits 1).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hato.cli.errors import CommandError
from hato.cli.options import load

if TYPE_CHECKING:
    import psycopg

    from hato.accounts import UserStore
    from hato.config import Settings
    from hato.pgstore import PgSettings

CHECKPASSWORD_FAILED = 1
CHECKPASSWORD_MISUSE = 2
CHECKPASSWORD_TEMPFAIL = 111
_MAX_INPUT = 512  # the interface's limit on what fd 3 holds
USERS_DB = "users.db"
PG_NODE = "dovecot-auth"  # its connection's application_name: "hato dovecot-auth"


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
    from hato.model import Address, AddressError
    from hato.model.storeerror import StoreError

    try:
        address = Address.parse(user)
    except AddressError:
        return CHECKPASSWORD_FAILED
    try:
        with _accounts(settings) as store:
            if not store.verify(address, password):
                return CHECKPASSWORD_FAILED
    except (StoreError, OSError, CommandError) as exc:
        print(f"hato dovecot-auth: {_reason(exc)}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    except Exception as exc:  # a traceback exits 1: "wrong password" to Dovecot
        print(f"hato dovecot-auth: {type(exc).__name__}: {exc}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    os.environ["USER"] = f"{address.local.lower()}@{address.domain.lower()}"
    os.execvp(args.reply[0], args.reply)


def _reason(exc: Exception) -> str:
    if isinstance(exc, CommandError):
        return " ".join(exc.lines)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or 'the accounts'}: {exc.strerror}"
    return str(exc)  # a StoreError names its store


@contextlib.contextmanager
def _accounts(settings: Settings) -> Iterator[UserStore]:
    """The accounts `hato user` edits: DATA_DIR/users.db, or the shared PostgreSQL store's
    `users` table. Raises CommandError when they cannot be opened (users.db missing, psycopg
    not installed); a store that fails later raises hato.model.storeerror's errors.

    Only what the backend needs is imported (this runs once per IMAP login): not
    hato.boot.store, which wires every room; psycopg only with PostgreSQL."""
    if settings.store.backend != "postgresql":
        from hato.accounts import UserStore

        database = Path(settings.server.data_dir) / USERS_DB
        if not database.is_file():
            raise CommandError(f"{database}: no such file (see: hato user add)")
        store = UserStore(database, scram_iterations=settings.auth.stored_scram_iterations)
        try:
            yield store
        finally:
            store.close()
        return
    from hato.boot.pgsettings import pg_settings
    from hato.boot.process import StartupError

    try:
        pg = pg_settings(settings, PG_NODE)
    except StartupError as exc:  # psycopg missing
        raise CommandError(str(exc), exc.exit_code) from None
    from hato.accounts.postgres import PgUserStore

    source = _OneConnection(pg)
    try:
        yield PgUserStore(source, scram_iterations=settings.auth.stored_scram_iterations)
    finally:
        source.close()


class _OneConnection:
    """The one connection of this one-shot process, made at first use (a
    hato.accounts.postgres.ConnectionSource). Not a pool: a pool starts threads, and each
    thread's malloc arena counts against Dovecot's limit on the auth process's address space
    (default_vsz_limit, 256M), leaving argon2id's 64 MiB no room."""

    def __init__(self, pg: PgSettings) -> None:
        self._pg = pg
        self._conn: psycopg.Connection[Any] | None = None

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        from hato.model.storeerror import StoreUnavailable
        from hato.pgstore import connect

        if self._conn is None:
            try:
                self._conn = connect(self._pg)  # within libpq's connect_timeout
            except StoreUnavailable as exc:  # libpq's reason, first line
                raise StoreUnavailable(f"the PostgreSQL store is unreachable: {exc}") from None
        yield self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def dovecot_config(args: argparse.Namespace) -> int:
    settings = load(args).settings
    print(render(settings, args.config, args.listen, args.imap_port, args.imaps_port), end="")
    hato = Path(shutil.which("hato") or Path(sys.executable).with_name("hato"))
    programs = (hato, Path(os.path.realpath(sys.executable)))
    blocked = unreachable_program(_owner_name(_auth_file(settings)), programs)
    if blocked is not None:
        print(f"hato: warning: {blocked}", file=sys.stderr)
    return 0


def unreachable_program(user: str, programs: tuple[Path, ...]) -> str | None:
    """Why Dovecot's auth process (`user`) could not run `hato dovecot-auth` (`programs`: the
    script and the interpreter it runs), or None: every
    login would then fail with "Temporary authentication failure" and only Dovecot's log would
    say why (execv: Permission denied), e.g. for a Python installed under /root (pyenv)."""
    from hato.delivery.owner import MailboxOwner, closed_parent

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    who = MailboxOwner(user, entry.pw_uid, entry.pw_gid)
    for program in programs:
        blocked = closed_parent(program / "x", who)  # the program's own x bit too
        if blocked is not None:
            return (
                f"Dovecot's auth process runs hato dovecot-auth as {user!r}, who cannot run "
                f"{program} ({blocked} is closed to it): every IMAP login would fail with a "
                f"temporary error; install hato where {user!r} can run it (a venv of the "
                f"system's python3), or chmod o+x {blocked}"
            )
    return None


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
    # The checkpassword program reads the accounts: it runs (as the auth process's user) as
    # the owner of users.db, or with PostgreSQL of store.password_file (else of the data
    # directory, whose user has the ~/.pgpass): Dovecot's own default user can read neither.
    auth_user = _owner_name(_auth_file(settings))
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


def _auth_file(settings: Settings) -> Path:
    """The file whose owner `hato dovecot-auth` must run as to read the accounts."""
    if settings.store.backend != "postgresql":
        return Path(settings.server.data_dir) / USERS_DB
    if settings.store.password_file is not None:
        return Path(settings.store.password_file)
    return Path(settings.server.data_dir)


def _owner_name(path: Path) -> str:
    try:
        uid = path.stat().st_uid
    except OSError:
        uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
