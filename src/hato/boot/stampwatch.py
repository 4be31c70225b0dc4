"""Whether a database file may have changed since its stamp was last read: inotify(7).

`DatabaseStamp` (boot/dbcache.py) tells a change to the user or key database by two stat(2)
calls, at every step that looks a recipient up (two databases at RCPT, the users again before
the Maildir: six a message). `StampWatch` lets it skip them while nothing happened: one
inotify instance per process watches each database file, its WAL, and their directory (a
file created, removed or renamed over: a WAL that appears, a database restored by `mv`), and
one look at it that finds no event says no stamp it watches can have changed: an ioctl(2)
FIONREAD (the octets of the events queued), and a read(2) only when there are some (a read
that finds none fails with EAGAIN: an exception in Python, three times the cost).

Why this is exact: the kernel queues the event inside the write(2), truncate(2), utime(2),
rename(2) or unlink(2) that changes the file (fsnotify), before that call returns to the other
process (`hato user`, `hato key`, sqlite3); so a change finished before our read is among the
events that read returns, and the stamp is then read by stat(2) as before. A watch is added
before the stat pair it guards, so a change between the two is an event too. Every event,
an overflowed queue (IN_Q_OVERFLOW) or a watch the kernel dropped makes its stamps read again.
SQLite never writes a database through a memory map unless built to (SQLITE_MMAP_READWRITE),
the one write inotify would not see.

Where it is not used (every read then stats, as before): a file system whose changes may come
from another kernel (NFS, FUSE and virtiofs, 9p, overlayfs's lower layers): only ext2-4, XFS,
btrfs, tmpfs, F2FS and ZFS; a database or WAL that is a symbolic link (the directory watched
would not be its target's); no inotify (ENOSYS, or its limits reached). A process made by fork
starts without the parent's instance (the events of one descriptor go to one reader).

Part of the composition root (may import every room).
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import struct
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
DIR_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

# statfs(2) f_type of local file systems, whose every change goes through this kernel.
LOCAL_FILE_SYSTEMS = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # XFS
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0xF2F52010,  # F2FS
        0x2FC12FC1,  # ZFS
    }
)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch, libc.statfs  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def _ioctl_holding_gil() -> Callable[[int, int, int], int] | None:
    """libc's ioctl(2), called with the GIL held (ctypes.PyDLL), or None."""
    try:
        ioctl = ctypes.PyDLL(None, use_errno=True).ioctl
    except (OSError, AttributeError):
        return None
    ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
    ioctl.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], ioctl)


_IOCTL = _ioctl_holding_gil()


def queued_octets(fd: int, answer: ctypes.c_int) -> int:
    """inotify(7) FIONREAD: the octets of the events queued on `fd` (an overflow's too).

    Asked with the GIL held: FIONREAD never blocks, and `fcntl.ioctl` lets the GIL go for
    it, which on a busy worker hands it to the Maildir thread and makes the loop wait for
    it back (a futex(2) pair and two context switches, for a call of a microsecond; issue
    15). Raises OSError as `fcntl.ioctl` does."""
    if _IOCTL is None:
        pending = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, pending)
        return pending[0]
    if _IOCTL(fd, termios.FIONREAD, ctypes.addressof(answer)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return answer.value


def file_system_type(path: str) -> int | None:
    """statfs(2)'s f_type of the file system holding `path` (Linux), or None."""
    if _LIBC is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type first
    if _LIBC.statfs(os.fsencode(path), buffer) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buffer).value) & 0xFFFFFFFF


class Watched:
    """One database's files under the watch; `changed` is set by every event about them."""

    __slots__ = ("changed", "directory", "lost", "names", "paths")

    def __init__(self, path: Path) -> None:
        self.paths = (str(path), f"{path}-wal")
        self.directory = str(path.parent)
        self.names = frozenset(os.fsencode(Path(p).name) for p in self.paths)
        self.changed = True  # nothing read yet
        self.lost = False  # its directory's watch is gone (moved, removed): stat from now on


class StampWatch:
    """The inotify instance of this process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live = True  # False in a child made by fork: it must not read the parent's events
        self._fd = -1
        self._watched: list[Watched] = []
        self._by_wd: dict[int, list[Watched]] = {}
        self._dirs: dict[int, list[Watched]] = {}  # directory watches
        self._pending = ctypes.c_int(0)  # FIONREAD's answer (under the lock)

    def watch(self, path: Path) -> Watched | None:
        """Watch the database at `path` and its WAL; None where a watch would not be exact."""
        if not self._live or file_system_type(str(path.parent)) not in LOCAL_FILE_SYSTEMS:
            return None
        with self._lock:
            if self._fd < 0:
                assert _LIBC is not None  # file_system_type answered
                fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
                if fd < 0:
                    return None  # ENOSYS, EMFILE (max_user_instances)
                self._fd = fd
            watched = Watched(path)
            wd = self._add(watched.directory, DIR_EVENTS)
            if wd < 0:
                return None
            self._dirs.setdefault(wd, []).append(watched)
            self._watched.append(watched)
            return watched

    def changed(self, watched: Watched, *, drain: bool = True) -> bool:
        """Whether `watched` may have changed since its last `rearm`: reads the events first
        (unless `drain` is False: they were read a moment ago, in this step)."""
        if not self._live:
            return True
        with self._lock:
            if drain:
                self._drain()
            return watched.changed or watched.lost or not self._live

    def rearm(self, watched: Watched) -> None:
        """Before its stamp is read: clear `changed` and watch the files as they are now (a
        change after this is an event; one before it is in the stamp read after)."""
        if not self._live:
            return
        with self._lock:
            watched.changed = False
            for path in watched.paths:
                if os.path.islink(path):
                    watched.lost = True  # its target's directory is not watched: stat
                    return
                wd = self._add(path, FILE_EVENTS)
                if wd >= 0:
                    group = self._by_wd.setdefault(wd, [])
                    if watched not in group:
                        group.append(watched)
                elif ctypes.get_errno() != errno.ENOENT:
                    watched.changed = True  # not watched (max_user_watches): stat every time
                # A missing file (no WAL yet): its creation is an event of the directory.

    def _add(self, path: str, mask: int) -> int:
        assert _LIBC is not None
        return int(_LIBC.inotify_add_watch(self._fd, os.fsencode(path), mask))

    def _drain(self) -> None:
        while True:
            try:
                # inotify(7): FIONREAD counts every queued event, an overflow's too.
                if not queued_octets(self._fd, self._pending):
                    return
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # not expected: from now on every stamp is read by stat
                self._live = False
                return
            offset = 0
            while offset < len(data):
                wd, mask, _, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                self._event(wd, mask, name)

    def _event(self, wd: int, mask: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            for watched in self._watched:  # events were lost
                watched.changed = True
            return
        group = self._dirs.get(wd)
        if group is not None:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                for watched in group:  # the directory is not where it was, or not watched
                    watched.lost = True
            else:
                for watched in group:
                    if name in watched.names:
                        watched.changed = True
            return
        for watched in self._by_wd.get(wd, ()):
            watched.changed = True
        if mask & IN_IGNORED:
            self._by_wd.pop(wd, None)  # the file is gone: `rearm` watches its successor


_watch: StampWatch | None = None
_watch_lock = threading.Lock()


def process_watch() -> StampWatch:
    """This process's `StampWatch`, made on first use."""
    global _watch
    with _watch_lock:
        if _watch is None:
            _watch = StampWatch()
        return _watch


def _after_fork_in_child() -> None:
    """The parent's instance stays the parent's: here every stamp it served is read by stat,
    and the next `process_watch` makes this process its own."""
    global _watch, _watch_lock
    if _watch is not None:
        _watch._live = False
        _watch._lock = threading.Lock()  # another thread may have held it at the fork
        if _watch._fd >= 0:
            os.close(_watch._fd)  # this process's reference; the parent keeps its own
            _watch._fd = -1
    _watch, _watch_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
