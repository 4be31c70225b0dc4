"""The maildrop: messages hato-sendmail left while the server was down (as Postfix's pickup).

Theory of operation. DATA_DIR/maildrop is made at start, mode 1733: every local user may create
files there (the sticky bit: remove only their own), nobody but the server may list it. A
client writes ``.NAME``, syncs it and renames it to ``NAME`` (hato.cli.sendmail_site), so a file
without a leading dot is complete. The server looks at start and then every few seconds; each
file is one JSON line ({"from", "rcpt"}) and the message. The submitting user is the file's
owner (a user cannot make a file that belongs to another), never what the file says, and the
message goes through the same `LocalSubmitter` as a live submission: the same sender checks and
sending limits. Queued: the file is removed. Refused for good: removed, with an
``event=maildrop-refused`` line naming the user and the reason (nobody is there to see an
exit code). Refused for now (a full disk, a sending limit): left, and that user's files are
passed by for REST seconds (they would be refused the same).

Only regular files with one link, opened without following a symlink and no bigger than the
message size limit, are read: a user cannot make the server read another file through it.
Whatever a local user puts there (a directory, a FIFO, a head line nested 60,000 deep, a
recipient no address can be made of) is refused and removed, or when it cannot be removed (a
directory with files of its owner's) logged once and passed by: one user's file never stops
the server, which runs this in its task group (before 2026-12-08 `mkdir maildrop/x` ended
`hato serve`, and every start after it).
A crash after the queue commit and before the removal queues the message a second time at the
next start (the same window as Postfix's pickup).

May import model and this room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from hato.model import logfmt
from hato.server.localsubmit import LocalSubmitter, SubmitRefused, reverse_path

log = logging.getLogger("hato.control")

MAILDROP = "maildrop"
MODE = 0o1733
INTERVAL = 2.0  # seconds between looks while running
# A user whose file was refused for now (its sending limit, a full disk) has its files passed by
# for this long: 5,000 small files of one user over its hourly limit were each read and judged
# again at every look, half a CPU for the rest of the hour (2026-12-08).
REST = 60.0
_MAX_HEAD = 64 * 1024  # the JSON line


def prepare(data_dir: Path) -> Path:
    """Make DATA_DIR/maildrop (mode 1733) if needed; returns it."""
    path = data_dir / MAILDROP
    path.mkdir(exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != MODE:
        os.chmod(path, MODE)  # mkdir's mode is cut by the umask
    return path


class Pickup:
    def __init__(self, path: Path, submit: LocalSubmitter, domain: str, max_size: int) -> None:
        self._path = path
        self._submit = submit
        self._domain = domain
        self._max = max_size
        self._waiting: set[str] = set()  # names refused for now: logged once
        self._kept: set[str] = set()  # names that could not be removed: passed by
        self._resting: dict[int, float] = {}  # uid -> loop time until its files wait (REST)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Look now, then every INTERVAL seconds, until cancelled."""
        while True:
            await self.look()
            if ready is not None:
                ready()
                ready = None
            await asyncio.sleep(INTERVAL)

    async def look(self) -> int:
        """Take every complete file once; returns how many were queued."""
        try:
            names = sorted(n for n in os.listdir(self._path) if not n.startswith("."))
        except FileNotFoundError:
            return 0
        queued = 0
        loop = asyncio.get_running_loop()
        self._resting = {u: t for u, t in self._resting.items() if t > loop.time()}
        for name in names:
            # Its owner is asked (an lstat) only while some user's files rest.
            if name in self._kept or (self._resting and self._owner(name) in self._resting):
                continue
            queued += await self._one(name)
        return queued

    def _owner(self, name: str) -> int | None:
        try:
            return os.lstat(self._path / name).st_uid
        except OSError:
            return None

    async def _one(self, name: str) -> int:
        """One file, as one session of its owner: nothing in it may end the server."""
        try:
            return await self._take(name)
        except Exception as exc:
            # The top of one local user's submission (STYLE.md: a catch-all at the top of a
            # session): a defect met with one file is logged once, the file waits for the next
            # look, and the server and every other file go on.
            if name not in self._waiting:
                self._waiting.add(name)
                error = f"{type(exc).__name__}: {exc}"
                log.error(logfmt("maildrop-failed", file=name, error=error[:200]))
            return 0

    async def _take(self, name: str) -> int:
        path = self._path / name
        try:
            read = await asyncio.to_thread(self._read, path)
        except (OSError, ValueError) as exc:
            log.warning(logfmt("maildrop-refused", file=name, reason=str(exc)[:200]))
            self._remove(name)
            return 0
        if read is None:
            return 0  # gone meanwhile
        uid, sender, recipients, message = read
        try:
            mail_from = reverse_path(sender, self._domain)
            queue_id = await self._submit(mail_from, recipients, message, uid=uid)
        except SubmitRefused as exc:
            if exc.reply.is_transient:
                # Its other files would be refused the same: they wait REST seconds.
                self._resting[uid] = asyncio.get_running_loop().time() + REST
                if name not in self._waiting:
                    self._waiting.add(name)
                    log.warning(logfmt("maildrop-deferred", file=name, uid=uid, reply=exc.reply))
                return 0
            log.warning(
                logfmt(
                    "maildrop-refused",
                    file=name,
                    uid=uid,
                    reply=exc.reply,
                    refused=",".join(exc.refused) or None,
                )
            )
            self._remove(name)
            return 0
        self._waiting.discard(name)
        self._remove(name)
        log.info(logfmt("maildrop-picked-up", file=name, id=queue_id, uid=uid))
        return 1

    def _remove(self, name: str) -> None:
        """Remove a file taken or refused. What cannot be removed (a directory of another
        user's with files in it: the sticky bit lets only its owner empty it) is passed by
        from now on, logged once."""
        try:
            os.unlink(self._path / name)
        except FileNotFoundError:
            pass
        except OSError as first:  # EISDIR: a directory; its owner's files may be in it
            try:
                os.rmdir(self._path / name)
            except FileNotFoundError:
                pass
            except OSError:
                self._kept.add(name)
                log.warning(logfmt("maildrop-unremovable", file=name, error=first.strerror))

    def _read(self, path: Path) -> tuple[int, str, list[str], bytes] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise ValueError("not a regular file of its own")
            if info.st_size > self._max + _MAX_HEAD:
                raise ValueError(f"{info.st_size} octets: over the message size limit")
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(info.st_size + 1)
        finally:
            os.close(fd)
        head, newline, message = data.partition(b"\n")
        if not newline or len(head) > _MAX_HEAD:
            raise ValueError("no header line")
        try:
            fields = json.loads(head)
        except RecursionError:  # "[[[[...": 64 KiB of nesting
            raise ValueError("the header line is nested too deep") from None
        if not isinstance(fields, dict):
            raise ValueError("the header line is not a JSON object")
        sender, recipients = fields.get("from"), fields.get("rcpt")
        if not isinstance(sender, str) or not isinstance(recipients, list) or not recipients:
            raise ValueError('the header line needs "from" and "rcpt"')
        if not all(isinstance(r, str) for r in recipients):
            raise ValueError('"rcpt" is a list of addresses')
        return info.st_uid, sender, recipients, message
