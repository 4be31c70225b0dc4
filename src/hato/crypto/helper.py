"""Encryption of big keyed mail in a helper process, so that the server's GIL stays free.

Why. `protect_stream` in a thread of the server kept the event loop waiting: the work is
Python and C calls that never let go of the GIL (py-spy, five 50 MB keyed messages at once:
the encryption thread held the GIL in 2/3 of the samples, mostly in `bytes.replace` for the
CRLF canonical form and in `base64.encodebytes`; the `cryptography` calls were 1%), and at
each wake-up the loop waited for it, up to the switch interval each time (issue 12 item 3:
a NOOP waited 90-136 ms after DATA). In another process it costs the server nothing but a
thread blocked in recv(2).

Theory of operation. `EncryptHelper` owns one child process (`python -c CHILD`),
started at its first job and again after it died, joined by a Unix socket pair. A job is
`protect_stream` itself, run in the child over the same inputs: the parent (in the thread
that awaits the result) makes the queue bodies the copies may need and creates their files,
then sends the scratch file's descriptor and the bodies' descriptors (SCM_RIGHTS, unix(7))
and a pickled `Job`: the scratch key, the recipients, the time, and a snapshot of
their keys and policies (the child never opens the key store). The child reads the scratch
file, writes each copy straight into its body's file, and answers `Done` (which body holds
which copy, and its size) or `Failed` (an OSError's errno and text). It writes no fsync: the
parent's `seal()` fsyncs the same file at the queue commit, before 250, as for any body.
One job at a time (a lock): the encryption gets one CPU at most, the sessions the rest, and
the child runs at nice 10 (NICENESS), so that when the CPUs are busy the event loop comes
first and big keyed mail waits longer for its 250.

Failure. The child dying mid-job (killed, out of memory) shows as EOF on the socket, a stuck
one as no answer within JOB_TIMEOUT (it is killed): `run` raises `HelperFailed`, the caller
discards every body (the files go) and answers 451; the scratch file is still the caller's,
so nothing was acknowledged and nothing is lost: the client sends again. The next job starts
a new child. When the server process ends, the child
reads EOF and exits; a body it was writing then has no queue row, and the queue's recovery
removes it at the next start, as for a crash during an in-process write. (A child busy with
a job when the server ends finishes that job first, then finds the socket closed.)

Must not import anything of hato but model.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hato.crypto.keys import PublicKey
from hato.crypto.keystore import FailurePolicy, KeyLookup, canonical
from hato.crypto.scratch import SealedFile, SealedScratch, read_sealed
from hato.crypto.spool import (
    KeyFailure,
    ProtectedStream,
    Sink,
    Stored,
    protect_stream,
    split_for_encryption,
)
from hato.model import Address

# The child reads the scratch file and writes the bodies in pieces of this size: few Python
# steps per message, memory a few of them (it is not the server's GIL any more).
PIECE = 1024 * 1024
# unix(7): at most SCM_MAX_FD (253) descriptors in one message; a message with more keyed
# recipients than that is encrypted in the caller's thread, as before.
MAX_FDS = 253
# RFC 5321 §4.5.3.2.6: a client waits 10 minutes for the reply to the final dot; a job that
# takes longer answers no one (the child is stuck: it is killed, the message gets 451).
JOB_TIMEOUT = 600.0
# setpriority(2): the child's nice value above the server's (see `main`).
NICENESS = 10
# The child's program (not `-m`: its classes would be __main__'s, which the parent cannot
# unpickle); the socket's descriptor follows as its argument.
CHILD = "import sys; from hato.crypto.helper import main; sys.exit(main(sys.argv))"
_MAX_MESSAGE = 64 * 1024 * 1024  # a job or an answer: small (keys, addresses); a sanity bound


class HelperFailed(Exception):
    """The helper process died or broke the protocol; the job's bodies are to be discarded."""


class FileSink(Sink, Protocol):
    """A body another process can write into (queue/body.py's BodyWriter)."""

    def file_for_writer(self) -> int: ...
    def written_elsewhere(self, octets: int, /) -> None: ...


F = TypeVar("F", bound=FileSink)


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """The keys and policies of a message's recipients, as `KeyLookup`: what the child needs
    of the key store (canonical address -> key, policy)."""

    entries: tuple[tuple[str, PublicKey, FailurePolicy], ...]

    @classmethod
    def of(cls, keys: KeyLookup, recipients: Iterable[Address]) -> KeySnapshot:
        found = {}
        for address in recipients:
            key = keys.get(address)
            if key is not None:
                found[canonical(address)] = (key, keys.policy(address))
        return cls(tuple((name, key, policy) for name, (key, policy) in found.items()))

    def get(self, address: Address) -> PublicKey | None:
        wanted = canonical(address)
        return next((key for name, key, _ in self.entries if name == wanted), None)

    def policy(self, address: Address) -> FailurePolicy:
        wanted = canonical(address)
        found = (policy for name, _, policy in self.entries if name == wanted)
        return next(found, FailurePolicy.DEFER)


@dataclass(frozen=True, slots=True)
class Job:
    """`protect_stream` over the scratch file (the first descriptor), writing the copies into
    the other descriptors in the order it asks for bodies."""

    key: bytes
    nonce: bytes
    recipients: tuple[Address, ...]
    keys: KeySnapshot
    now: dt.datetime
    head: bytes = b""  # header lines read before the scratch file (SealedFile.head)


@dataclass(frozen=True, slots=True)
class Copy:
    body: int  # index into the job's bodies
    recipients: tuple[Address, ...]
    encrypted: bool
    octets: int


@dataclass(frozen=True, slots=True)
class Done:
    copies: tuple[Copy, ...]
    deferred: tuple[KeyFailure, ...]
    in_clear: tuple[KeyFailure, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """An OSError: raised as one in the parent."""

    errno: int | None
    detail: str
    what: str  # the file that failed: "message scratch file" or "queue body"


@dataclass(frozen=True, slots=True)
class Broken:
    """Any other exception in the child (a defect): HelperFailed in the parent."""

    detail: str


# -- the parent's side -----------------------------------------------------------------------


class EncryptHelper:
    """The helper process (see the module docstring); `run` is called from worker threads."""

    def __init__(
        self, argv: Sequence[str] = (sys.executable, "-c", CHILD), timeout: float = JOB_TIMEOUT
    ) -> None:
        self._argv = tuple(argv)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def run(self, job: Job, fds: Sequence[int]) -> Done:
        """Blocks until the child answered; raises OSError for `Failed`, HelperFailed when
        the child died or gave no answer within the timeout (it is then stopped, and the next
        job starts a new one)."""
        with self._lock:
            sock = self._ensure()
            try:
                socket.send_fds(sock, [b"J"], list(fds))
                _send(sock, job)
                answer = _receive(sock)
            except Exception as exc:  # OSError, EOFError, a broken pickle: the child is gone
                self._stop()
                raise HelperFailed(f"the encryption helper failed: {exc}") from exc
        if isinstance(answer, Failed):
            raise OSError(answer.errno or 0, answer.detail, answer.what)
        if isinstance(answer, Broken):
            raise HelperFailed(f"the encryption helper failed: {answer.detail}")
        if not isinstance(answer, Done):
            raise HelperFailed(f"the encryption helper answered {type(answer).__name__}")
        return answer

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _ensure(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._sock is not None:
            return self._sock
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            self._proc = subprocess.Popen(
                [*self._argv, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        ours.settimeout(self._timeout)  # each send and recv; a hung child is a failed one
        self._sock = ours
        return ours

    def _stop(self) -> None:
        sock, self._sock = self._sock, None
        proc, self._proc = self._proc, None
        if sock is not None:
            sock.close()  # the child reads EOF and ends
        if proc is not None:
            if proc.poll() is None:
                proc.kill()  # it failed us (or we close): it may be stuck
            proc.wait()


def protect_far(
    helper: EncryptHelper,
    scratch: SealedScratch,
    recipients: Sequence[Address],
    keys: KeyLookup,
    now: dt.datetime,
    new_body: Callable[[], F],
) -> ProtectedStream[F]:
    """`protect_stream(scratch.chunks, ...)`, done by `helper` (blocks: call it in a worker
    thread). On an exception every body made is discarded."""
    plan = split_for_encryption(recipients, keys, now)
    # The bodies the child may ask for, in its order: the plaintext copy, one per key, and
    # the warning-headed copy when a key's policy is PLAINTEXT (spool.py `_protect`).
    in_clear = any(keys.policy(f.recipient) is FailurePolicy.PLAINTEXT for f in plan.failed)
    in_clear = in_clear or any(
        keys.policy(a) is FailurePolicy.PLAINTEXT for c in plan.encrypted for a in c.recipients
    )
    count = bool(plan.plain) + len(plan.encrypted) + in_clear
    if count + 1 > MAX_FDS:
        return protect_stream(scratch.chunks, recipients, keys, now, new_body)
    bodies: list[F] = []
    try:
        for _ in range(count):
            bodies.append(new_body())
        fds = [body.file_for_writer() for body in bodies]
        sealed = scratch.sealed()
        snapshot = KeySnapshot.of(keys, recipients)
        job = Job(sealed.key, sealed.nonce, tuple(recipients), snapshot, now, sealed.head)
        done = helper.run(job, [sealed.fd, *fds])
        if any(not 0 <= copy.body < len(bodies) for copy in done.copies):
            raise HelperFailed("the encryption helper named a body it was not given")
    except BaseException:
        for body in bodies:
            body.discard()
        raise
    used = {copy.body for copy in done.copies}
    for index, body in enumerate(bodies):
        if index not in used:
            body.discard()
    stored = []
    for copy in done.copies:
        bodies[copy.body].written_elsewhere(copy.octets)
        stored.append(Stored(bodies[copy.body], copy.recipients, copy.encrypted))
    return ProtectedStream(tuple(stored), done.deferred, done.in_clear)


def _send(sock: socket.socket, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(len(data).to_bytes(4, "big") + data)


def _receive(sock: socket.socket) -> object:
    size = int.from_bytes(_exactly(sock, 4), "big")
    if size > _MAX_MESSAGE:
        raise EOFError(f"a message of {size} octets")
    # Between our own two processes (as multiprocessing does): never data from outside.
    return pickle.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        got = sock.recv(size - len(data))
        if not got:
            raise EOFError("the other process closed the socket")
        data += got
    return bytes(data)


# -- the child's side ------------------------------------------------------------------------


class _BodyFile:
    """A body in the child: its file's descriptor, written in pieces."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self.fd = fd
        self.octets = 0
        self._buf = bytearray()

    def write(self, data: bytes, /) -> None:
        self.octets += len(data)
        self._buf += data
        if len(self._buf) >= PIECE:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self._buf)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise _BodyError(exc) from exc
        finally:
            view.release()
            self._buf.clear()

    def discard(self) -> None:
        self._buf.clear()  # the parent removes the file


class _BodyError(Exception):
    """A body's write(2) failed (ENOSPC, EIO): told apart from the scratch file's pread(2)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _work(job: Job, fds: Sequence[int]) -> Done:
    sealed = SealedFile(fds[0], job.key, job.nonce, job.head)
    free = list(enumerate(fds[1:]))
    free.reverse()

    def new_body() -> _BodyFile:
        if not free:
            raise ValueError("more bodies asked for than given")
        return _BodyFile(*free.pop())

    done = protect_stream(
        lambda: read_sealed(sealed, PIECE), job.recipients, job.keys, job.now, new_body
    )
    for copy in done.copies:
        copy.body.flush()
    copies = (Copy(c.body.index, c.recipients, c.encrypted, c.body.octets) for c in done.copies)
    return Done(tuple(copies), done.deferred, done.in_clear)


def serve(sock: socket.socket) -> None:
    """The child's loop: a job, its answer, until the parent closes the socket."""
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(sock, 1, 256)
            if not fds:
                return  # EOF: the parent is gone
            job = _receive(sock)
        except EOFError:
            return
        answer: Done | Failed | Broken
        try:
            if not isinstance(job, Job):
                raise TypeError(f"not a job: {type(job).__name__}")
            answer = _work(job, fds)
        except _BodyError as exc:
            answer = Failed(exc.error.errno, exc.error.strerror or str(exc.error), "queue body")
        except OSError as exc:  # the scratch file's pread(2)
            answer = Failed(exc.errno, exc.strerror or str(exc), "message scratch file")
        except Exception as exc:  # a defect: told to the parent, which logs it; we go on
            answer = Broken(f"{type(exc).__name__}: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
        try:
            _send(sock, answer)
        except OSError:
            return  # the parent is gone (EPIPE)


def main(argv: Sequence[str]) -> int:
    # Ctrl-C at a terminal reaches the whole process group: the server decides, and the
    # child ends when the server closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: the sessions' event loop comes first when the CPUs are busy.
    os.nice(NICENESS)
    serve(socket.socket(fileno=int(argv[1])))
    return 0
