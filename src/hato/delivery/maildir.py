"""Local delivery into Maildir++ mailboxes: ``mailboxes_root/DOMAIN/USER/{tmp,new,cur}``.

Theory of operation (Maildir: https://cr.yp.to/proto/maildir.html): a message is written to
``tmp/NAME``, fsynced, closed and renamed to ``new/NAME``; then ``new/`` itself is fsynced so the
rename survives a crash. Only then is the recipient Delivered (DESIGN.md: 250 means durable).

Exactly once (DESIGN.md): NAME is deterministic per (queue id, recipient row), so a second attempt
after a crash renames onto the same name and replaces the same message instead of adding a copy.
(qmail links instead of renaming so that a name clash fails; we want the clash to be idempotent.)
A row found unfinished at start-up (``recovered``) or tried before is first looked up in ``new/``
and in ``cur/``, where a reader may have moved it (adding ``:2,flags``), and not written again.

All file work runs in worker threads (one by default, `hato.durable.worker`), never on the
event loop. The ``deliver()`` calls of one turn of an event loop (every session whose message
ended in the same read of the sockets) reach the worker together at the end of that turn, with
one wake-up (`BatchWorker.submit_soon`). A worker takes every call waiting at that moment as one
batch: it writes all the tmp files, then makes them durable (`hato.durable.files.sync_files`:
an fsync for a single file; for several, one syncfs(2) per file system, one journal commit
instead of one per file), renames each into ``new/``, makes the renames durable (`sync_dirs`:
an fsync of each distinct ``new/`` directory, or one syncfs per file system for several, as a
message to 100 mailboxes has), and settles every caller with one wake-up of the event loop.
The busier the server, the bigger the batches (the same idea as the queue's group commit). A
small body comes inline in the message (``QueuedMessage.body``) and is written with its header
lines in one writev(2); a file body up to 256 KiB is read once, a bigger one is copied by the
kernel.

A local failure (full disk, EIO) is a TempFailed with a ``retry_after`` hint (10 s, doubling
per attempt), so mail accepted before a disk filled is delivered soon after room is made.

Must not import anything of hato but model, durable and directory (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hato.directory.names import MAX_DOMAIN, is_safe_mailbox_name
from hato.durable.files import fsync_dir, sync_dirs, sync_files, write_all, write_all_v
from hato.durable.worker import BatchWorker, call_on_loop
from hato.model import (
    Address,
    Clock,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    Reply,
    TempFailed,
    format_path,
    logfmt,
)

log = logging.getLogger("hato.delivery.maildir")

# A body up to this size is read once and written with the headers in one write(); a bigger
# one is copied in chunks by the kernel (DESIGN.md: bodies stream).
SMALL_BODY = 256 * 1024
_CHUNK = 1024 * 1024
# Copies (files) written per batch at most: each holds an open descriptor until its fsync.
MAX_BATCH_COPIES = 256
MAX_KEPT_MAILBOXES = 4096  # directory names and Delivered-To lines kept; past it, made again
# After a local failure (full disk, EIO): try again after 10 s, 20 s, 40 s, ... (at most 5 min;
# the queue's normal backoff is the upper bound anyway).
LOCAL_RETRY_FIRST = 10.0
LOCAL_RETRY_MAX = 300.0
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC

# RFC 3463 §3.3 X.2.2 mailbox full, §3.4 X.3.1 mail system full, X.3.0 other mail system status;
# RFC 5321 §4.2.2: 452 insufficient system storage, 451 local error in processing.
QUOTA_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
# RFC 3463 §3.2 X.1.1 bad destination mailbox address.
BAD_MAILBOX = Reply(550, "5.1.1", "No such mailbox")


# The queue parameter naming a Maildir++ folder to deliver into (set by the session, e.g.
# "Junk" for DMARC quarantine). Not an ESMTP keyword (no "." there), so no client can set it.
FOLDER_PARAM = "hato.folder"


def _escape_host(host: str) -> str:
    # Maildir: "/" and ":" in the host part are written as \057 and \072.
    return host.replace("/", "\\057").replace(":", "\\072")


def base_name(message: QueuedMessage, recipient: QueuedRecipient, hostname: str) -> str:
    """The unique part of the file name, without ``,S=size`` and ``:2,flags``."""
    seconds = int(message.received_at)
    micro = int(message.received_at * 1_000_000) % 1_000_000
    queue_id = _escape_host(message.queue_id)
    return f"{seconds}.M{micro}Q{queue_id}R{recipient.row_id}.{_escape_host(hostname)}"


class _TempFailure(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _reply_for(exc: OSError) -> Reply:
    if exc.errno == errno.EDQUOT:
        return QUOTA_FULL
    if exc.errno == errno.ENOSPC:
        return DISK_FULL
    return LOCAL_ERROR  # EIO, EROFS, EACCES, a vanished body file, ...


def _copy_body(out_fd: int, body_fd: int, size: int) -> None:
    """Copy `size` bytes of the body file into `out_fd` without holding it in memory."""
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(out_fd, body_fd, offset, min(_CHUNK, size - offset))
            if sent == 0:
                raise OSError(errno.EIO, "body file shorter than its size")
            offset += sent
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    while offset < size:  # sendfile() cannot do this pair of files: plain reads and writes
        chunk = os.pread(body_fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "body file shorter than its size")
        write_all(out_fd, chunk)
        offset += len(chunk)


def _mkdir(path: str) -> bool:
    """mkdir 0700; False if it was there already."""
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return False
    return True


@dataclass(slots=True, eq=False)
class _Request:
    """One `deliver()` call waiting for the worker: its outcomes fill in as the batch goes."""

    message: QueuedMessage
    recipients: Sequence[QueuedRecipient]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Outcome]]
    outcomes: list[Outcome | None]


@dataclass(slots=True, eq=False)
class _Copy:
    """One message file of a batch: written to tmp/, waiting for its fsync and rename."""

    request: _Request
    index: int  # of the recipient in request.recipients
    new_dir: str
    fd: int = -1  # -1: already delivered by an earlier attempt, nothing to write
    tmp_path: str = ""
    new_path: str = ""
    dev: int = 0  # the file system of the file (one syncfs per file system)


class MaildirCourier:
    """Delivers into Maildir++ mailboxes (implements `hato.model.Courier`).

    `recipient.address` is the mailbox (after alias resolution): ``user@domain`` is
    ``mailboxes_root/domain/user`` (both lower-cased), created 0700 on first delivery.
    `max_threads` worker threads take the waiting `deliver()` calls in batches.
    """

    def __init__(
        self,
        mailboxes_root: Path,
        hostname: str,
        *,
        clock: Clock,
        max_threads: int = 1,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self._root = str(mailboxes_root)
        # (uid, gid) every directory and file is given to ([local] mailbox_owner), or None.
        self._owner = owner
        self._host = _escape_host(hostname)
        self._hostname = hostname
        self._clock = clock
        self._worker = BatchWorker(
            self._deliver_batch,
            name="maildir",
            max_batch=MAX_BATCH_COPIES,
            threads=max(1, max_threads),
            weight=lambda request: len(request.recipients),
        )
        # Mailbox dirs seen to exist (skips the mkdirs) -> the file system they are on.
        self._known: dict[str, int] = {}
        # (local part, domain, folder) -> the mailbox's directory and Delivered-To line.
        self._mailboxes: dict[tuple[str, str, str | None], tuple[str, bytes]] = {}
        self.batches = 0  # counters for the benchmark and tests
        self.requests_done = 0

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        if not recipients:
            return []
        if not self._worker.started:
            self._worker.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        # With the other deliveries of this turn of the loop: one wake-up, one batch.
        self._worker.submit_soon(
            loop, _Request(message, recipients, loop, future, [None] * len(recipients))
        )
        return await future

    def close(self) -> None:
        """Stop the worker threads (waits for running deliveries)."""
        self._worker.stop()

    # -- the workers (threads) ---------------------------------------------------------------

    def _deliver_batch(self, batch: list[_Request]) -> None:
        """Write every copy of every message to tmp/, make them durable (`sync_files`),
        rename each into new/, and make the renames durable once for the batch (`sync_dirs`)."""
        started = self._clock.monotonic()
        copies: list[_Copy] = []
        for request in batch:
            self._write_request(request, copies)
        # Maildir: every file is durable before its rename into new/ (DESIGN.md: durable).
        synced = sync_files((copy.fd, copy.dev) for copy in copies if copy.fd >= 0)
        written: list[_Copy] = []
        for copy in copies:
            if copy.fd < 0:
                written.append(copy)  # delivered by an earlier attempt: only the dir fsync
                continue
            try:
                try:
                    error = synced.get(copy.fd)
                    if error is not None:
                        raise error
                finally:
                    os.close(copy.fd)
                os.rename(copy.tmp_path, copy.new_path)
            except OSError as exc:
                self._copy_failed(copy, exc)
            else:
                written.append(copy)
        # The renames survive a crash only once new/ is synced: each distinct new/ once, or one
        # syncfs for the many new/ of a file system (`sync_dirs`).
        dirs = sync_dirs((copy.new_dir, copy.dev) for copy in written)
        failed: set[str] = set()
        for copy in written:
            error = dirs[copy.new_dir]
            if error is not None:
                # The files may be in new/ already; a retry renames onto the same names.
                if copy.new_dir not in failed:
                    failed.add(copy.new_dir)
                    log.warning(logfmt("maildir-fsync-failed", dir=copy.new_dir, error=error))
                copy.request.outcomes[copy.index] = self._temp_failed(
                    copy.request, copy.index, error
                )
            elif copy.request.outcomes[copy.index] is None:
                copy.request.outcomes[copy.index] = Delivered("maildir")
        self.batches += 1
        self.requests_done += len(batch)
        if log.isEnabledFor(logging.DEBUG):
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 3)
            log.debug(
                logfmt("maildir-batch", messages=len(batch), copies=len(copies), ms=elapsed_ms)
            )
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for request in batch:
            by_loop.setdefault(request.loop, []).append(request)
        for loop, requests in by_loop.items():
            call_on_loop(loop, _settle, requests)

    def _write_request(self, request: _Request, copies: list[_Copy]) -> None:
        """Open the body once and write one tmp/ file per recipient (no fsync yet)."""
        message, recipients = request.message, request.recipients
        body_fd = -1
        try:
            if message.body is not None:
                body: bytes | None = message.body
                body_size = len(message.body)
            else:
                body_fd = os.open(message.body_path, os.O_RDONLY | os.O_CLOEXEC)
                body_size = os.fstat(body_fd).st_size
                body = os.read(body_fd, body_size) if body_size <= SMALL_BODY else None
                if body is not None and len(body) != body_size:
                    raise OSError(errno.EIO, "short read of the body file")
            # "replace": a stray surrogate from the wire must not make delivery raise.
            head = f"Return-Path: {format_path(message.mail_from)}\r\n".encode("utf-8", "replace")
            for i, rcpt in enumerate(recipients):
                try:
                    copy = self._write_one(request, i, head, body_fd, body, body_size)
                except OSError as exc:
                    self._log_failure(message, rcpt, exc)
                    request.outcomes[i] = self._temp_failed(request, i, exc)
                else:
                    if copy is None:
                        request.outcomes[i] = PermFailed(BAD_MAILBOX)
                    else:
                        copies.append(copy)
        except OSError as exc:  # the body file could not be read
            log.warning(logfmt("maildir-body-failed", queue_id=message.queue_id, error=exc))
            for i in range(len(recipients)):
                if request.outcomes[i] is None:
                    request.outcomes[i] = self._temp_failed(request, i, exc)
        finally:
            if body_fd >= 0:
                os.close(body_fd)

    def _temp_failed(self, request: _Request, index: int, exc: OSError) -> TempFailed:
        # A full disk or an I/O error often passes once an admin acts: ask to be tried again
        # soon, sooner than the queue's normal backoff, and a little later each time.
        attempts = request.recipients[index].attempts
        hint = min(LOCAL_RETRY_FIRST * 2.0 ** min(attempts, 16), LOCAL_RETRY_MAX)
        return TempFailed(_reply_for(exc), retry_after=hint)

    def _copy_failed(self, copy: _Copy, exc: OSError) -> None:
        request = copy.request
        self._log_failure(request.message, request.recipients[copy.index], exc)
        request.outcomes[copy.index] = self._temp_failed(request, copy.index, exc)
        with contextlib.suppress(OSError):
            os.unlink(copy.tmp_path)

    def _log_failure(self, message: QueuedMessage, rcpt: QueuedRecipient, exc: OSError) -> None:
        log.warning(
            logfmt(
                "maildir-failed",
                queue_id=message.queue_id,
                row=rcpt.row_id,
                mailbox=rcpt.address,
                error=exc,
            )
        )

    def _mailbox_of(self, rcpt: QueuedRecipient, folder: str | None) -> tuple[str, bytes] | None:
        """(`_mailbox_dir`, the Delivered-To line) of the recipient, kept per address: the
        same mailbox again and again on a busy server; None for a bad mailbox name."""
        key = (rcpt.address.local, rcpt.address.domain, folder)
        found = self._mailboxes.get(key)
        if found is None:
            mailbox = self._mailbox_dir(rcpt, folder)
            if mailbox is None:
                return None
            # RFC 5322 §3.4.1: a local part that is not a dot-atom stays quoted
            # ("a@b"@example.org).
            address = str(Address(rcpt.address.local.lower(), rcpt.address.domain.lower()))
            if len(self._mailboxes) >= MAX_KEPT_MAILBOXES:
                self._mailboxes.clear()
            found = self._mailboxes[key] = (mailbox, f"Delivered-To: {address}\r\n".encode())
        return found

    def _mailbox_dir(self, rcpt: QueuedRecipient, folder: str | None = None) -> str | None:
        local = rcpt.address.local.lower()
        domain = rcpt.address.domain.lower()
        if not is_safe_mailbox_name(local) or not is_safe_mailbox_name(domain, MAX_DOMAIN):
            return None  # path traversal is impossible: never a directory outside the root
        if folder is not None:
            if not is_safe_mailbox_name(folder):
                return None
            # Maildir++: a folder is a Maildir named ".NAME" inside the user's Maildir root.
            return f"{self._root}/{domain}/{local}/.{folder}"
        return f"{self._root}/{domain}/{local}"

    def _write_one(
        self,
        request: _Request,
        index: int,
        head: bytes,
        body_fd: int,
        body: bytes | None,
        body_size: int,
    ) -> _Copy | None:
        """Write one copy to tmp/ (left open for the batch's fsync), or find it delivered
        already; None for a bad mailbox name."""
        message, rcpt = request.message, request.recipients[index]
        found = self._mailbox_of(rcpt, message.params.get(FOLDER_PARAM))
        if found is None:
            return None
        mailbox, delivered_to = found
        header = head + delivered_to + message.prefix
        base = base_name(message, rcpt, self._hostname)
        name = f"{base},S={len(header) + body_size}"
        new_dir = mailbox + "/new"
        if (rcpt.recovered or rcpt.attempts > 0) and self._already_there(mailbox, base, name):
            # Only its new/ is synced again; on the file system it is on (`sync_dirs`).
            return _Copy(request, index, new_dir, dev=os.stat(new_dir).st_dev)
        tmp_path = f"{mailbox}/tmp/{name}"
        fd, dev = self._open_tmp(mailbox, tmp_path)
        try:
            if body is not None:
                write_all_v(fd, (header, body))  # one writev(2), the body not copied
            else:
                write_all(fd, header)
                _copy_body(fd, body_fd, body_size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return _Copy(request, index, new_dir, fd, tmp_path, f"{new_dir}/{name}", dev)

    def _open_tmp(self, mailbox: str, tmp_path: str) -> tuple[int, int]:
        """Create the tmp/ file; returns it and the device (file system) it is on."""
        dev = self._known.get(mailbox)
        if dev is not None:
            try:
                return self._create(tmp_path), dev
            except FileNotFoundError:
                del self._known[mailbox]  # removed behind our back: make it again
        self._make_mailbox(mailbox)
        dev = os.stat(f"{mailbox}/tmp").st_dev
        self._known[mailbox] = dev
        return self._create(tmp_path), dev

    def _create(self, path: str) -> int:
        fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
        if self._owner is not None:
            try:
                os.fchown(fd, *self._owner)  # the reader's before it is renamed into new/
            except OSError:
                os.close(fd)
                raise
        return fd

    def _mkdir(self, path: str) -> bool:
        """mkdir 0700 (given to the owner, if any); False if it was there already."""
        if not _mkdir(path):
            return False
        if self._owner is not None:
            os.chown(path, *self._owner)
        return True

    def _make_mailbox(self, mailbox: str) -> None:
        """Create root, domain and mailbox dirs and tmp/ new/ cur/, each 0700 (only the
        missing ones), and fsync each parent whose entries changed."""
        if not os.path.isdir(self._root):
            os.makedirs(os.path.dirname(self._root), mode=_DIR_MODE, exist_ok=True)
            self._mkdir(self._root)
        changed: list[str] = []
        parent = self._root
        for part in os.path.relpath(mailbox, self._root).split(os.sep):
            path = f"{parent}/{part}"
            if self._mkdir(path):
                changed.append(parent)
            parent = path
        made = [self._mkdir(f"{mailbox}/{sub}") for sub in ("tmp", "new", "cur")]
        if os.path.basename(mailbox).startswith("."):
            # Maildir++ marks a folder with an empty "maildirfolder" file (Courier, Dovecot).
            marker = f"{mailbox}/maildirfolder"
            if not os.path.exists(marker):
                os.close(self._create(marker))
                made.append(True)
        if any(made):
            changed.append(mailbox)
        for path in changed:
            fsync_dir(path)  # new directory entries must survive a crash too

    def _already_there(self, mailbox: str, base: str, name: str) -> bool:
        """Whether an earlier attempt delivered this copy (in new/, or moved to cur/)."""
        if os.path.exists(f"{mailbox}/new/{name}"):
            return True
        try:
            with os.scandir(f"{mailbox}/cur") as entries:
                for entry in entries:
                    rest = entry.name[len(base) :]
                    if entry.name.startswith(base) and (not rest or rest[0] in ",:"):
                        return True
        except FileNotFoundError:
            return False
        return False


def _settle(requests: list[_Request]) -> None:
    """On the requests' event loop: hand each caller its outcomes."""
    for request in requests:
        if not request.future.done():
            outcomes = request.outcomes
            request.future.set_result(
                [o if o is not None else TempFailed(LOCAL_ERROR) for o in outcomes]
            )
