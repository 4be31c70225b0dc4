"""Writing files so that they survive a crash: the file's data, and its name in the directory.

fsync(2) of a file makes its data durable, not its directory entry: a file just created or
renamed is only there after a crash once its directory is fsynced too (`fsync_dir`). For many
new files on one file system, one syncfs(2) writes them all back and commits the journal once,
where an fsync each would wait for one journal commit each (`sync_files`); the same holds for
the entries of many directories (`sync_dirs`: one message to 100 local mailboxes renames a
file into 100 new/ directories).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# From this many files of a batch on one file system, one syncfs(2) instead of an fsync each.
SYNCFS_FROM = 2


def write_all(fd: int, data: bytes | memoryview) -> None:
    """write(2) until all of `data` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_v(fd: int, pieces: Sequence[bytes]) -> None:
    """writev(2) of `pieces` until all of them are written: one system call and no joined copy
    of them (a Maildir file's header lines and its 10 KiB body were joined into a new bytes
    object first). A short write goes on from where it stopped."""
    total = sum(len(piece) for piece in pieces)
    written = os.writev(fd, pieces)
    if written == total:
        return
    view = memoryview(b"".join(pieces))[written:]
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory `path` durable (new, renamed or removed names in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):  # not Linux (or no syncfs in its C library)
        return None
    return function


# syncfs(2) through ctypes (which lets go of the GIL for the call); None where there is none.
_SYNCFS = _load_syncfs()


def has_syncfs() -> bool:
    return _SYNCFS is not None


def syncfs(fd: int) -> None:
    """Write back every dirty file of the file system of `fd` and commit its journal once.

    Since Linux 5.8 it also reports a writeback error of any file there (as fsync does)."""
    if _SYNCFS is None:
        raise OSError(0, "syncfs(2) is not available here")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def sync_files(files: Iterable[tuple[int, int]]) -> dict[int, OSError | None]:
    """Make written files durable; `files` are (descriptor, device) pairs. Returns each
    descriptor's error (or None).

    One file on a file system: fsync(2). Several: one syncfs(2) per file system instead of one
    fsync each. On ext4 every fsync of a new file is its own journal commit and waits for it
    (~200 us here), so a batch of N files waited N commits; syncfs writes them all back and
    commits once (~35 us a file). Meant for a file system that holds these files and little
    else (the mailboxes)."""
    result: dict[int, OSError | None] = {}
    by_dev: dict[int, list[int]] = {}
    for fd, dev in files:
        by_dev.setdefault(dev, []).append(fd)
    for fds in by_dev.values():
        if len(fds) >= SYNCFS_FROM and _SYNCFS is not None:
            try:
                syncfs(fds[0])
                error: OSError | None = None
            except OSError as exc:
                error = exc  # we cannot tell which file failed: none of them is durable
            result.update((fd, error) for fd in fds)
            continue
        for fd in fds:
            try:
                os.fsync(fd)
                result[fd] = None
            except OSError as exc:
                result[fd] = exc
    return result


def sync_dirs(dirs: Iterable[tuple[str, int]]) -> dict[str, OSError | None]:
    """Make the entries of directories durable (names just created or renamed in them);
    `dirs` are (path, device) pairs. Returns each path's error (or None).

    One directory on a file system: its fsync (`fsync_dir`). Several: one syncfs(2) of that file
    system, which commits the journal holding all of their changes once, where an fsync each
    waited for a commit (or a disk cache flush) each: 0.3-1.2 ms a directory on a loaded ext4
    here, against 30-60 us a directory for one syncfs of 100. Meant, as `sync_files`, for the
    file system of the mailboxes."""
    result: dict[str, OSError | None] = {}
    by_dev: dict[int, dict[str, None]] = {}  # insertion-ordered sets of paths
    for path, dev in dirs:
        by_dev.setdefault(dev, {})[path] = None
    for in_dev in by_dev.values():
        paths = list(in_dev)
        if len(paths) >= SYNCFS_FROM and _SYNCFS is not None:
            try:
                fd = os.open(paths[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)
                error: OSError | None = None
            except OSError as exc:
                error = exc  # none of them is known to be durable
            result.update((path, error) for path in paths)
            continue
        for path in paths:
            try:
                fsync_dir(path)
                result[path] = None
            except OSError as exc:
                result[path] = exc
    return result
