"""What `hato check-config` checks beyond the file: what `hato serve` would stop at, and what
would go wrong later, checked as the user the server runs as (issue 13).

As the caller (root, when `[server] user` is set, like `serve` before its privilege drop): the
TLS certificate and key load and match. As the server's user (a child process that becomes
it, when the caller is root; else the caller itself): the data directory is writable, the
aliases file is readable, `[local] mailbox_owner` can be given the mail files and reach them
(serve stops at each, exit 78); DKIM keys are readable (else that
domain's mail goes out unsigned); the TLS files and the smarthost's password file are readable
(else a renewed certificate or a reload cannot read them; serve reads them as root at start,
so these are warnings).

Must not import anything of hato at module level but hato.cli.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.server.privileges import Identity


@dataclass(slots=True)
class Findings:
    """Problems stop `serve` (or break mail); warnings are worth knowing."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def preflight(settings: Settings) -> Findings:
    from hato.boot.owner import root_in_users_data_dir
    from hato.server.privileges import PrivilegeError, lookup_identity
    from hato.server.tls import TLSConfigError, server_context

    found = Findings()
    mixed = root_in_users_data_dir(settings.server.user, Path(settings.server.data_dir))
    if mixed is not None:  # serve stops at it (78)
        found.problems.append(mixed)
    if settings.tls is not None and settings.tls.cert is not None and settings.tls.key is not None:
        try:
            server_context(settings.tls.cert, settings.tls.key)
        except TLSConfigError as exc:
            found.problems.append(str(exc))
    identity = None
    if settings.server.user is not None:
        try:
            identity = lookup_identity(settings.server.user, settings.server.group)
        except PrivilegeError as exc:
            found.problems.append(str(exc))
            return found
    if identity is not None and os.geteuid() == 0 and identity.uid != 0:
        as_user = _in_child(settings, identity)
    elif identity is not None and identity.uid != os.geteuid():
        found.warnings.append(
            f"server.user is {identity.user!r}: run check-config as root (as serve is started) "
            f"or as {identity.user!r} to check the files as that user; checked as uid "
            f"{os.geteuid()} instead"
        )
        as_user = _as_server_user(settings, None)
    else:
        as_user = _as_server_user(settings, identity)
    found.problems.extend(as_user.problems)
    found.warnings.extend(as_user.warnings)
    return found


def _in_child(settings: Settings, identity: Identity) -> Findings:
    """_as_server_user run in a child that became `identity` (the caller stays root)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the server's user, check, report, exit
        os.close(read)
        try:
            import hato.delivery.owner  # noqa: F401  (_as_server_user's, imported as root)
            from hato.boot.predrop import preload
            from hato.server.privileges import switch_to

            preload()  # what Python would import later, from where `identity` may not read
            switch_to(identity)
            found = _as_server_user(settings, identity)
            os.write(write, json.dumps([found.problems, found.warnings]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    try:
        problems, warnings = json.loads(data)
    except ValueError:
        return Findings([f"could not check the files as user {identity.user!r}"])
    return Findings(list(problems), list(warnings))


def _as_server_user(settings: Settings, identity: Identity | None) -> Findings:
    from hato.delivery.owner import OwnerError, resolve_owner
    from hato.server.privileges import Identity, PrivilegeError, check_data_dir

    found = Findings()
    if settings.local.mailbox_owner is not None:
        try:  # serve stops at it, after the drop (boot.build.mailbox_owner)
            resolve_owner(settings.local.mailbox_owner, settings.mailboxes)
        except OwnerError as exc:
            found.problems.append(str(exc))
    who = identity.user if identity is not None else f"uid {os.geteuid()}"
    data_dir = Path(settings.server.data_dir)
    if data_dir.exists():
        me = identity or Identity(who, os.geteuid(), str(os.getegid()), os.getegid())
        try:
            check_data_dir(data_dir, me)
        except PrivilegeError as exc:
            found.problems.append(str(exc))
    aliases = settings.local.aliases_file
    if aliases is not None and not os.access(aliases, os.R_OK):
        found.problems.append(
            f"local.aliases_file: {aliases} is not readable by {who}, as which the server "
            "reads it; give that user read access"
        )
    for domain in settings.domains:
        key = data_dir / "dkim" / domain.name.lower() / f"{domain.dkim_selector.lower()}.key"
        try:
            key.stat()
        except FileNotFoundError:
            continue
        except PermissionError:
            pass
        if not os.access(key, os.R_OK):
            found.problems.append(
                f"DKIM key {key} is not readable by {who}: mail of {domain.name} would go out "
                f"unsigned; fix: chown -R {who} {data_dir / 'dkim'}"
            )
    later = []
    if settings.tls is not None and settings.tls.cert is not None and settings.tls.key is not None:
        later += [("tls.cert", settings.tls.cert), ("tls.key", settings.tls.key)]
    if settings.smarthost is not None and settings.smarthost.password_file is not None:
        later.append(("smarthost.password_file", settings.smarthost.password_file))
    for key_name, path in later:
        if not os.access(path, os.R_OK):
            found.warnings.append(
                f"{key_name}: {path} is readable only before the privilege drop: the server "
                f"reads it at start, but as {who} it cannot read a renewed file or reload; "
                f"give {who} read access if it changes"
            )
    return found
