"""A keyed recipient's message while it is being received: a temporary file that holds only
ciphertext, under a key that exists nowhere but in this process's memory.

Theory of operation. The plaintext of mail for a user with a key must never reach the disk
(docs/encryption.md), yet a message may be far too big to hold in memory while DATA lasts and
while each recipient's copy is encrypted. So the session writes it here: every chunk is
encrypted with AES-256-CTR under a random key and nonce before it is written, and the key is
in memory only. The file is made by `tempfile.TemporaryFile` in the spool directory: on Linux
an O_TMPFILE file, which has no name and vanishes with its descriptor (after a crash too);
elsewhere it is unlinked at once. Whoever reads the disk, during or after, finds ciphertext
whose key is gone.

`write()` runs on the event loop: one cipher update per chunk and one write(2) per 64 KiB.
`chunks()` reads the message back from its start, decrypting, as often as asked (in a worker
thread: encryption reads it three times). `sealed()` gives what another process needs to do
the same (`read_sealed`): the descriptor, to be passed over a Unix socket, and the key, which
then exists in that process's memory too (crypto/helper.py, for big messages). An OSError
while writing (ENOSPC, EIO) is kept, not raised, as the session must read the rest of DATA
anyway; `chunks()` and `sealed()` raise it, and the session answers 451/452 instead of 250.

`close()` leaves the close(2) of a file that holds data to one background thread (`_CLOSER`):
closing the last descriptor of an O_TMPFILE file frees its blocks there and then, and for a
50 MB message on ext4 that took 14-25 ms of the event loop's time, longer while the journal
was busy with the queue's fsyncs (issue 12 item 3: a session waited 147 ms right after five
50 MB keyed messages). Nothing of the message is readable meanwhile: the file has no name,
and its key was only ever in this object.

Must not import anything of hato but model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

FLUSH_AT = 64 * 1024
READ_SIZE = 64 * 1024

# One thread: the closes are rare (one per keyed message) and need no parallelism.
_CLOSER = ThreadPoolExecutor(1, thread_name_prefix="hato-scratch-close")


def closes_done() -> Future[None]:
    """A future that is done once every close handed to the background thread so far is."""
    return _CLOSER.submit(lambda: None)


def _close_quietly(file: BinaryIO) -> None:
    # The descriptor is gone either way, and an O_TMPFILE file with it.
    with contextlib.suppress(OSError):
        file.close()


@dataclass(frozen=True, slots=True)
class SealedFile:
    """What it takes to read a scratch file from its start: its descriptor (still owned by
    the `SealedScratch`), the AES-256 key and the CTR nonce; `head`, the header lines put in
    front of the message after it was written (`SealedScratch.prepend`)."""

    fd: int
    key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    head: bytes = field(default=b"", repr=False)


def read_sealed(sealed: SealedFile, size: int = READ_SIZE) -> Iterator[bytes]:
    """The plaintext of a scratch file from its start (its `head` first), in chunks of about
    `size` octets."""
    decryptor = Cipher(algorithms.AES(sealed.key), modes.CTR(sealed.nonce)).decryptor()
    offset = 0
    head = sealed.head
    while data := os.pread(sealed.fd, size, offset):
        offset += len(data)
        yield head + decryptor.update(data) if head else decryptor.update(data)
        head = b""
    if head:
        yield head  # an empty message: only the head


class SealedScratch:
    __slots__ = (
        "_buf",
        "_closed",
        "_encryptor",
        "_error",
        "_file",
        "_head",
        "_key",
        "_nonce",
        "_spilled",
        "size",
    )

    def __init__(self, directory: str) -> None:
        self._key, self._nonce = os.urandom(32), os.urandom(16)
        cipher = Cipher(algorithms.AES(self._key), modes.CTR(self._nonce))
        self._encryptor = cipher.encryptor()
        self._buf = bytearray()
        self._head = b""  # header lines put in front afterwards (prepend): memory only
        self._error: OSError | None = None
        self._closed = False
        self.size = 0  # plaintext octets written
        self._spilled = False  # the file holds data (its close frees blocks: see the docstring)
        self._file: BinaryIO | None = None
        try:
            # Owned by this object until close() (a context manager cannot span DATA).
            self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        except OSError as exc:
            self._error = exc

    def write(self, data: bytes) -> None:
        """Append a chunk; never raises for an I/O error (see the module docstring)."""
        self.size += len(data)
        if self._error is not None:
            return
        self._buf += self._encryptor.update(data)
        if len(self._buf) >= FLUSH_AT:
            self._flush()

    def prepend(self, lines: bytes) -> None:
        """Put header lines in front of the message written so far (the fields the checks
        and filters added after it came: intake/message.py). Held in memory, as the header
        lines are (bounded by the caller), and read first by `chunks` and `read_sealed`."""
        self._head = lines + self._head
        self.size += len(lines)

    def _flush(self) -> None:
        assert self._file is not None
        self._spilled = True
        view = memoryview(self._buf)
        try:
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
        except OSError as exc:
            self._error = exc
        finally:
            view.release()
            self._buf.clear()

    def chunks(self) -> Iterator[bytes]:
        """The message from its start, decrypted; raises the kept OSError, if any."""
        return read_sealed(self.sealed())

    def sealed(self) -> SealedFile:
        """Everything written is in the file: how to read it (see `read_sealed`); raises the
        kept OSError, if any. The descriptor stays this object's (`close` closes it)."""
        if self._error is None and self._buf:
            self._flush()
        if self._error is not None:
            raise self._error
        assert self._file is not None
        return SealedFile(self._file.fileno(), self._key, self._nonce, self._head)

    def discard(self) -> None:
        """The message is refused: as `close`."""
        self.close()

    def close(self) -> None:
        """Forget the file (and with it, since the key goes too, the message)."""
        if self._closed:
            return
        self._closed = True
        self._buf.clear()
        self._head = b""
        file, self._file = self._file, None
        if file is None:
            return
        if self._spilled:
            _CLOSER.submit(_close_quietly, file)  # off the caller's thread (the event loop)
        else:
            _close_quietly(file)
