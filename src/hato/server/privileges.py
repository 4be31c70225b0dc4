"""Dropping root after the ports are bound: supplementary groups, group, user; then a check
that the data directory is ours to write.

Theory of operation. Ports 25, 465 and 587 need root (or CAP_NET_BIND_SERVICE); nothing after
binding does. `drop_privileges` is called once, after every listener is bound: it sets the
supplementary groups of the target user (initgroups), then the group, then the user, each with
its real, effective and saved id, in that order (once the uid is not 0 the gids can no longer
change), and then proves that root cannot be regained. Already running as the target user
(systemd's User=hato) is fine and changes nothing. Running as root with no user configured is
allowed, with a warning on every start. Afterwards the data directory and what is in it (to a
bounded depth) must be writable by the new user; if not, start-up stops with the command that
fixes it.

Before the drop, root must not write in the data directory as root: the directory is the
server user's, and whoever runs as that user (a compromised worker) can put a symbolic or hard
link there to a system file that root would then write, truncate or give away. So what root
makes there it makes `acting_as_owner` (its effective ids the data directory owner's, for the
while: a link then grants only what that user may anyway), and what it must give to that user
it gives with `give_to` (the file opened without following a link, given only if it is root's
and has no other name).

May import model; nothing else of hato.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hato.model import logfmt

log = logging.getLogger("hato")

CHECK_DEPTH = 2  # DATA_DIR/queue/messages, DATA_DIR/mailboxes/example.org, ...
CHECK_LIMIT = 10_000  # entries looked at, at most: a large mailbox tree is not walked whole
SHOWN = 3  # paths named in the error


class PrivilegeError(Exception):
    """Start-up cannot go on as configured; the message names the key or path and the fix."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the server runs as after the drop."""

    user: str
    uid: int
    group: str
    gid: int


def lookup_identity(user: str, group: str | None = None) -> Identity:
    """The uid and gid of `user` (and of `group`, else the user's primary group)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"server.user: no user {user!r} on this system; create it "
            f"(useradd --system --home-dir /var/lib/hato --shell /usr/sbin/nologin {user}) "
            "or name an existing one"
        ) from None
    if group is None:
        gid = entry.pw_gid
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        return Identity(user, entry.pw_uid, name, gid)
    try:
        return Identity(user, entry.pw_uid, group, grp.getgrnam(group).gr_gid)
    except KeyError:
        raise PrivilegeError(
            f"server.group: no group {group!r} on this system; create it (groupadd --system "
            f"{group}) or remove server.group to use {user}'s own group"
        ) from None


def drop_privileges(user: str | None, group: str | None, *, data_dir: Path) -> Identity | None:
    """Become `user` (and `group`) for good; None when nothing was configured.

    Raises PrivilegeError when the switch is impossible or the data directory is not
    writable by the new user.
    """
    if user is None:
        if group is not None:
            raise PrivilegeError("server.group: needs server.user too (whom to run as)")
        if os.geteuid() == 0:
            log.warning(
                logfmt(
                    "running-as-root",
                    detail='set [server] user (e.g. user = "hato") to drop root after binding',
                )
            )
        return None
    target = lookup_identity(user, group)
    if target.uid == 0 and os.geteuid() == 0:
        log.warning(logfmt("running-as-root", detail=f"server.user {user!r} is root"))
        return target
    if os.geteuid() != target.uid or os.getegid() != target.gid:
        switch_to(target)
    check_data_dir(data_dir, target)
    return target


def switch_to(target: Identity) -> None:
    """Become `target` for good (supplementary groups, group, user); PrivilegeError if not."""
    if os.geteuid() != 0:
        current = _user_name(os.geteuid())
        raise PrivilegeError(
            f"server.user: cannot become {target.user!r}: hato runs as {current!r}, not root; "
            f"start it as root, or as {target.user!r} and keep server.user"
        )
    try:
        os.initgroups(target.user, target.gid)
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
    except OSError as exc:
        # e.g. a seccomp filter (systemd SystemCallFilter=~@privileged) refusing setuid.
        raise PrivilegeError(
            f"server.user: cannot switch to {target.user!r}: {exc.strerror or exc}; "
            "under systemd use User= and Group= in the unit instead of server.user"
        ) from exc
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError(f"server.user: root could be regained after becoming {target.user!r}")
    log.info(
        logfmt(
            "privileges-dropped",
            user=target.user,
            uid=target.uid,
            group=target.group,
            gid=target.gid,
        )
    )


def check_data_dir(data_dir: Path, target: Identity) -> None:
    """Every directory and file under `data_dir` (to CHECK_DEPTH) is writable by us now."""
    owner = target.user if target.group == target.user else f"{target.user}:{target.group}"
    try:
        reachable = data_dir.is_dir()
    except PermissionError:
        reachable = False  # a parent directory is closed to the new user
    if not reachable:
        raise PrivilegeError(
            f"server.data_dir: {data_dir} does not exist or cannot be reached by {target.user!r}; "
            f"create it: install -d -o {target.user} -m 0700 {data_dir}"
        )
    bad = [path for path in _walk(data_dir) if not _writable(path)]
    if bad:
        shown = ", ".join(str(p) for p in bad[:SHOWN]) + (" …" if len(bad) > SHOWN else "")
        raise PrivilegeError(
            f"server.data_dir: {data_dir} is not writable by user {target.user!r} ({shown}); "
            f"fix: chown -R {owner} {data_dir}"
        )


def _walk(root: Path) -> Iterator[Path]:
    yield root
    seen = 1
    level = [root]
    for _ in range(CHECK_DEPTH):
        below = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except PermissionError:
                continue  # the directory itself was reported as not writable
            for entry in entries:
                if seen >= CHECK_LIMIT:
                    return
                seen += 1
                if entry.is_symlink():
                    continue
                path = Path(entry.path)
                yield path
                if entry.is_dir():
                    below.append(path)
        level = below


def _writable(path: Path) -> bool:
    if path.is_socket():
        return True  # control.sock: the server replaces it at start
    if not os.path.lexists(path):
        return True  # gone since the listing: another worker's SQLite journal, a temporary
    mode = os.W_OK | (os.X_OK | os.R_OK if path.is_dir() else os.R_OK)
    return os.access(path, mode)


@contextlib.contextmanager
def acting_as_owner(data_dir: Path) -> Iterator[None]:
    """Root, for the while, with the effective ids (and only group) of `data_dir`'s owner:
    what it makes is that user's, and no link that user planted makes it write elsewhere.
    Nothing changes when not root or when the data directory is root's. The real and saved
    uid stay 0 (no process of that user may signal or trace this one meanwhile)."""
    owner = os.stat(data_dir)
    if os.geteuid() != 0 or owner.st_uid == 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([owner.st_gid])
    os.setegid(owner.st_gid)
    os.seteuid(owner.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def give_to(path: Path, uid: int, gid: int) -> None:
    """`path`, made by root, becomes uid:gid's: not through a symbolic link (nothing is
    given), and not a file with another name (a hard link to a system file). Raises OSError
    but FileNotFoundError (gone: nothing to give)."""
    try:
        fd = os.open(path, _NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a socket (opened by nobody)
            return
        raise
    try:
        st = os.fstat(fd)  # the file given is the one checked: no swap in between
        if st.st_uid == 0 and (
            stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)
        ):
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
