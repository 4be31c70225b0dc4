"""One incoming message body, streamed to its spool file; the error a failed write becomes.

Must not import anything of hato but model.

Theory of operation: `write()` runs on the event loop for every chunk the session gets. It
only appends to a memory buffer and writes the buffer to the file once it holds 64 KiB, so
the loop pays one write(2) per 64 KiB and never an fsync. The file itself is created only
then (creating a file costs far more than writing it: 300-750 us of kernel time on ext4).
A body that never reached 64 KiB, most mail, never becomes a file at all: `inline` is true
and `Queue.commit()` stores `take_inline()` in the message row, in the same group-committed
transaction (no file create, fsync, directory fsync or unlink).
An OSError (ENOSPC, EIO) is kept rather than raised: the session goes on reading the DATA
it must consume anyway, and `Queue.commit()` raises it as QueueWriteError so the client gets
451/452, never 250.
For a body that did become a file, the rest of the buffer, the fsync and the close happen
in `seal()`, which the queue runs in its (small) fsync thread pool.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterator

from hato.model import logfmt
from hato.model.queuestore import QueueWriteError

__all__ = ["FLUSH_AT", "BodyWriter", "QueueWriteError"]

log = logging.getLogger("hato.queue")

FLUSH_AT = 64 * 1024


class _State(enum.Enum):
    OPEN = "open"
    SEALED = "sealed"  # handed to commit(): no more writes
    DISCARDED = "discarded"


class BodyWriter:
    """The body of one message being received; get one from `Queue.new_body()`."""

    __slots__ = ("_buf", "_error", "_fd", "_spilled", "_state", "path", "queue_id", "size")

    def __init__(self, queue_id: str, path: str) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0  # octets written so far
        self._fd = -1  # the file is created at the first flush
        self._spilled = False  # a flush was tried: the body is (or was to be) a file
        self._buf = bytearray()
        self._error: OSError | None = None
        self._state = _State.OPEN

    @property
    def error(self) -> OSError | None:
        """The first write error, if any (commit() raises it as QueueWriteError)."""
        return self._error

    @property
    def inline(self) -> bool:
        """Whether the whole body is still in memory (it never reached the flush threshold)."""
        return not self._spilled and self._error is None

    def peek_inline(self) -> bytes:
        """A copy of the whole body of an inline message, which stays in the buffer (the
        session delivers local recipients from it and may still commit the rest)."""
        if not self.inline:
            raise RuntimeError(f"body {self.queue_id} is a file, not inline")
        return bytes(self._buf)

    def take_inline(self) -> bytes:
        """The whole body of an inline message (see `inline`); the buffer is released."""
        if not self.inline:
            raise RuntimeError(f"body {self.queue_id} is a file, not inline")
        data = bytes(self._buf)
        self._buf = bytearray()
        return data

    def written_out(self) -> bool:
        """Write what is still buffered to the body's file (made now if need be), without an
        fsync, so that another reader of `path` sees the whole body: a local delivery before
        the commit reads it from there (the copies it makes are fsynced themselves; `seal()`
        still makes this file durable should the body be queued after all). False after a
        write error, which the commit then reports. Runs on the loop: at most one 64 KiB
        write, as `write()` does."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"body {self.queue_id} is {self._state.value}")
        if self._error is None and (self._buf or self._fd < 0):
            self._flush()
        return self._error is None

    def write(self, data: bytes) -> None:
        """Append a chunk; never raises for an I/O error (see the module docstring)."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"body {self.queue_id} is {self._state.value}")
        self.size += len(data)
        if self._error is not None:
            return
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        self._spilled = True
        view = memoryview(self._buf)
        try:
            if self._fd < 0:
                # O_EXCL: a queue id is never reused, so an existing file is somebody else's.
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._error = exc
        finally:
            view.release()
            self._buf.clear()

    def file_for_writer(self) -> int:
        """Make the body a file now and give its descriptor to a writer in another process
        (crypto/helper.py writes a big keyed copy there), which reports the octets it wrote
        with `written_elsewhere`. The descriptor stays this body's: `seal()` fsyncs and
        closes it, `discard()` unlinks the file. Raises the kept or a new OSError."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"body {self.queue_id} is {self._state.value}")
        if self._error is None and (self._buf or self._fd < 0):
            self._flush()  # creates the file, even for an empty buffer
        if self._error is not None:
            raise self._error
        return self._fd

    def written_elsewhere(self, octets: int) -> None:
        """The writer given `file_for_writer()` wrote `octets` more to the file."""
        self.size += octets

    def seal(self) -> None:
        """Write what is buffered, fsync and close the file (in a worker thread).

        Raises the remembered or a new OSError; the caller then discards the body.
        """
        if self._error is None and (self._buf or self._fd < 0):
            self._flush()
        if self._error is not None:
            raise self._error
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_back(self, size: int = FLUSH_AT) -> Iterator[bytes]:
        """The body written so far, in chunks of at most `size` octets: its file, then the
        buffer; one chunk in memory at a time (a content filter reads the message before the
        commit). Raises the remembered write error, or OSError when the file cannot be read.
        The file part blocks: iterate it in a worker thread."""
        if self._error is not None:
            raise self._error
        if self._spilled:
            with open(self.path, "rb") as file:
                while chunk := file.read(size):
                    yield chunk
        for start in range(0, len(self._buf), size):
            yield bytes(self._buf[start : start + size])

    def mark_sealed(self) -> None:
        """No more writes: commit() has taken the body."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"body {self.queue_id} is {self._state.value}")
        self._state = _State.SEALED

    def discard(self) -> None:
        """Abandon the message: close and unlink the file. Safe to call more than once."""
        self._state = _State.DISCARDED
        self._buf.clear()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                log.warning(logfmt("body-close-failed", id=self.queue_id, error=exc.strerror))
        if not self._spilled:
            return  # never a file: nothing to remove
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Left behind, it is an orphan without a row: recovery at the next start removes it.
            log.warning(logfmt("body-unlink-failed", id=self.queue_id, error=exc.strerror))
