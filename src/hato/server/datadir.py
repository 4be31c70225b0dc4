"""The data directory at start-up: one server at a time, private modes, the server's secret.

Theory of operation. `hato serve` takes `DATA_DIR/hato.lock` (flock) for its whole run, so the
queue and the mailboxes have one writer; the `hato` CLI takes the same lock for offline work.
With the lock held, before any worker starts:

* the process umask becomes 077, so whatever the server creates from now on (the queue
  database and its WAL, spool files, certificates, DKIM keys) is its user's alone, whatever
  umask it was started with;
* what is already there is made private: every directory below `DATA_DIR` 0700, every file
  0600, except the `mailboxes/` tree, whose modes belong to local delivery (the Maildir writer
  makes them 0700/0600; docs/operations.md), and `maildrop/` (1733 on purpose: local users drop
  mail there while the server is down, server/maildrop.py). `DATA_DIR` itself loses every read
  and write bit but its owner's; a search bit (0711) an operator gave it so that local users
  reach the maildrop is left. A data directory made by hand, or files
  left by an older version or a `hato` command run under umask 022, would otherwise leave inline
  message bodies (`queue/queue.db` and its WAL) and password hashes readable by every local
  user. Each change is logged (`event=permissions-fixed`) so the operator sees what was open;
* `DATA_DIR/secret` (32 random bytes, 0600) is made once; it keys values that must stay the
  same across restarts and workers but be unguessable from outside (SCRAM's salt for names
  that are not accounts, server/auth.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hato.model import logfmt

log = logging.getLogger("hato")

EX_CANTCREAT = 73
EX_TEMPFAIL = 75
SECRET_FILE = "secret"
SECRET_SIZE = 32
DIR_MODE = 0o700
FILE_MODE = 0o600
# Left to local delivery (and an operator who opens it to a mailbox reader's group), and to
# the maildrop (1733, server/maildrop.py).
OWN_MODES = frozenset({"mailboxes", "maildrop"})
_TOP_KEEPS = 0o011  # DATA_DIR's search bits for group and others: the way to the maildrop
_SHOWN_FIXES = 20  # one line each; the rest are counted in a summary line


class DataDirError(Exception):
    """The data directory cannot be used; the message names the path and the fix."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def locked(
    data_dir: Path, owner: tuple[int, int] | None = None, origin: str = "server.data_dir"
) -> Iterator[None]:
    """One server per data directory, made private, with its secret. `owner` (uid, gid): who
    the server will run as, when root starts it ([server] user); `origin`: where the
    configuration got data_dir from (for the hint)."""
    os.umask(0o077)
    try:
        created = not data_dir.exists()
        data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        handle = open_lock(data_dir / "hato.lock")
        if owner is not None:
            # Made by root before the privilege drop, but they are the server's. The one
            # opened and checked (not through a link, not another name of a system file: the
            # directory is the server user's, who could put /etc/passwd there).
            st = os.fstat(handle.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.fchown(handle.fileno(), *owner)
            if created:
                os.chown(data_dir, *owner)
    except OSError as exc:
        # Issue 13: "set HATO_HOME" is no fix when server.data_dir names the directory.
        how = "server.data_dir" if origin == "server.data_dir" else "server.data_dir or HATO_HOME"
        raise DataDirError(
            f"server.data_dir: cannot create {data_dir} ({origin}): {exc.strerror}; "
            f"create it, or set {how} to a writable directory",
            EX_CANTCREAT,
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise DataDirError(
            f"server.data_dir: {data_dir} is in use by another hato process; "
            "stop it or give this one its own data_dir",
            EX_TEMPFAIL,
        ) from exc
    try:
        make_private(data_dir)
        _make_secret(data_dir, owner)
        yield
    finally:
        handle.close()


def make_private(data_dir: Path) -> int:
    """Directories 0700 and files 0600 under `data_dir` (not the mailboxes); how many changed.
    Walked through directory descriptors (os.fwalk), every entry opened without following a
    link: root runs this in a directory its server's user owns, who could swap a directory
    for a link to /etc while it is walked."""
    fixed = _fix(data_dir, DIR_MODE, 0, keep=_TOP_KEEPS)
    for root, dirs, files, root_fd in os.fwalk(data_dir, follow_symlinks=False):
        if Path(root) == data_dir:
            dirs[:] = sorted(d for d in dirs if d not in OWN_MODES)  # not walked into
            files = [f for f in files if f not in OWN_MODES]
        for name in dirs:
            fixed += _fix(Path(root, name), DIR_MODE, fixed, dir_fd=root_fd)
        for name in files:
            fixed += _fix(Path(root, name), FILE_MODE, fixed, dir_fd=root_fd)
    if fixed > _SHOWN_FIXES:
        log.warning(logfmt("permissions-fixed", path=data_dir, count=fixed))
    return fixed


def _fix(path: Path, mode: int, shown: int, keep: int = 0, dir_fd: int | None = None) -> int:
    """Take group and other permissions (but `keep`) away from one directory or file: the one
    opened without following a link (root runs this in a directory its server's user owns).
    With `dir_fd`, `path`'s name is opened in that directory."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path.name if dir_fd is not None else path, flags, dir_fd=dir_fd)
    except OSError:
        return 0  # gone meanwhile, a symbolic link (ELOOP), a socket (control.sock is 0600)
    try:
        return _fix_open(fd, path, mode, shown, keep)
    finally:
        os.close(fd)


def _fix_open(fd: int, path: Path, mode: int, shown: int, keep: int) -> int:
    st = os.fstat(fd)
    if not (stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)):
        return 0  # another name of a file elsewhere (a hard link to a system file) is left
    old = stat.S_IMODE(st.st_mode)
    if old & 0o077 & ~keep == 0:
        return 0
    new = (old & (0o700 | keep)) | (mode & 0o700)
    try:
        os.fchmod(fd, new)
    except OSError as exc:
        log.warning(
            logfmt("permissions-unfixable", path=path, mode=f"{old:04o}", error=exc.strerror)
        )
        return 0
    if shown < _SHOWN_FIXES:
        log.warning(logfmt("permissions-fixed", path=path, was=f"{old:04o}", now=f"{new:04o}"))
    return 1


def open_lock(path: Path) -> IO[str]:
    """DATA_DIR/hato.lock, made if need be, never through a symbolic link (ELOOP)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a+")
    except BaseException:
        os.close(fd)
        raise


def _make_secret(data_dir: Path, owner: tuple[int, int] | None) -> None:
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise DataDirError(
            f"server.data_dir: cannot create {path}: {exc.strerror}; make {data_dir} writable",
            EX_CANTCREAT,
        ) from exc
    try:
        os.write(fd, secrets.token_bytes(SECRET_SIZE))
        os.fsync(fd)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def server_secret(data_dir: Path) -> bytes:
    """The server's secret, made by `locked` (DataDirError if it is missing or damaged)."""
    path = data_dir / SECRET_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataDirError(
            f"server.data_dir: cannot read {path}: {exc.strerror}; start hato serve once "
            "with this data_dir to make it",
            EX_CANTCREAT,
        ) from exc
    if len(data) != SECRET_SIZE:
        raise DataDirError(
            f"server.data_dir: {path} is damaged ({len(data)} bytes, not {SECRET_SIZE}); "
            "delete it and start again (a new one is made)",
            EX_CANTCREAT,
        )
    return data
