"""Whom the files under the data directory belong to, for `hato` commands started as root.

Theory of operation. The server runs as `[server] user` (started as root) or as the user that
started it (systemd's User=hato, whose StateDirectory then belongs to it). A command that writes
under the data directory (users.db, keys.db, DKIM keys, Maildir files, the queue) must leave
files that user can read and write: a users.db or a DKIM key owned by root breaks AUTH or
signing. So a command started as root becomes that user before it touches the data directory,
and everything it creates (SQLite's -wal and -shm files too) is the server's from the start.
The user is `[server] user`, else the owner of the data directory when that is not root. A
command started by another unprivileged user that would write there is refused, with the way to
run it; so is one whose data directory the server's user cannot write (with the chown that
fixes it).
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from hato.server.privileges import Identity, PrivilegeError, check_data_dir, lookup_identity
from hato.server.privileges import switch_to as _switch_to


class OwnerError(Exception):
    """The command cannot write as the server's user; the message says how to run it."""


def server_owner(user: str | None, group: str | None, data_dir: Path) -> Identity | None:
    """The user the server runs as, when that is someone other than root (None: root/unknown)."""
    if user is not None:
        try:
            identity = lookup_identity(user, group)
        except PrivilegeError as exc:
            raise OwnerError(str(exc)) from None
        return identity if identity.uid != 0 else None
    try:
        st = data_dir.stat()
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    return Identity(_user_name(st.st_uid), st.st_uid, _group_name(st.st_gid), st.st_gid)


def root_in_users_data_dir(user: str | None, data_dir: Path) -> str | None:
    """Why root may not run the server with no `[server] user` in `data_dir`, or None.

    A data directory of another user's is that user's server's (the commands act as its
    owner, above): a server running as root would leave root's files there (its counters,
    its databases), and every `hato user`, `hato key`, ... would then stop at them, with a
    chown that the next start undoes. It happens to whoever removes `user` to use
    `[local] mailbox_owner` (which needs root)."""
    if user is not None or os.geteuid() != 0:
        return None
    try:
        owner = data_dir.stat().st_uid
    except OSError:
        return None
    if owner == 0:
        return None
    name = _user_name(owner)
    return (
        f"server.user: not set, so hato would run as root, but server.data_dir {data_dir} "
        f'belongs to {name!r}: set [server] user = "{name}" (root drops to it after '
        f"binding), or to run as root: chown -R root: {data_dir}"
    )


def create_data_dir(data_dir: Path, owner: Identity | None) -> None:
    """A new data directory (mode 0700), owned by the server's user."""
    try:
        data_dir.mkdir(parents=True, mode=0o700)
        if owner is not None and os.geteuid() == 0:
            os.chown(data_dir, owner.uid, owner.gid)
    except OSError as exc:
        raise OwnerError(f"cannot create {data_dir}: {exc.strerror or exc}") from None


def act_as(owner: Identity | None, data_dir: Path) -> None:
    """Become `owner` (when started as root) before writing under `data_dir`."""
    if owner is None or owner.uid == os.geteuid():
        return
    if os.geteuid() != 0:
        me = _user_name(os.geteuid())
        raise OwnerError(
            f"files under {data_dir} belong to the server's user {owner.user!r}, and this "
            f"command runs as {me!r}: run it as root or as {owner.user!r} "
            f"(sudo -u {owner.user} hato ...)"
        )
    from hato.boot.predrop import preload

    preload()  # codecs and modules: Python may be installed where `owner` cannot read
    try:
        _switch_to(owner)
        check_data_dir(data_dir, owner)
    except PrivilegeError as exc:
        raise OwnerError(str(exc)) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
