"""Local delivery into Maildir++ mailboxes: ``mailboxes_root/DOMAIN/USER/{tmp,new,cur}``.

Theory of operation (Maildir: https://cr.yp.to/proto/maildir.html): a message is written to
``tmp/NAME``, fsynced, closed and renamed to ``new/NAME``; then ``new/`` itself is fsynced so the
rename survives a crash. Only then is the recipient Delivered (DESIGN.md: 250 means durable).

Exactly once (DESIGN.md): NAME is deterministic per (queue id, recipient row), so a second attempt
after a crash renames onto the same name and replaces the same message instead of adding a copy.
(qmail links instead of renaming so that a name clash fails; we want the clash to be idempotent.)
A row found unfinished at start-up (``recovered``) or tried before is first looked up in ``new/``
and in ``cur/``, where a reader may have moved it (adding ``:2,flags``), and not written again.

All file work runs in a thread pool, one worker call per message (all its recipients), never on
the event loop; each ``new/`` directory is fsynced once per call.

Must not import anything of hato but model (DESIGN.md allows smtp and crypto to the room).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hato.model import (
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
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets; §4.5.3.1.2: a domain at most 255.
_MAX_LOCAL = 64
_MAX_DOMAIN = 255

# RFC 3463 §3.3 X.2.2 mailbox full, §3.4 X.3.1 mail system full, X.3.0 other mail system status;
# RFC 5321 §4.2.2: 452 insufficient system storage, 451 local error in processing.
QUOTA_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
# RFC 3463 §3.2 X.1.1 bad destination mailbox address.
BAD_MAILBOX = Reply(550, "5.1.1", "No such mailbox")


def is_safe_mailbox_name(name: str, max_octets: int = _MAX_LOCAL) -> bool:
    """Whether `name` can be one directory name under the mailboxes root, and nothing more.

    Refused: "/", "\\", NUL and other control characters, "." and "..", a leading "." (hidden,
    and Maildir++ folder names), the empty name, more than `max_octets` UTF-8 octets.
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return False
    try:
        if len(name.encode("utf-8")) > max_octets:
            return False
    except UnicodeEncodeError:  # lone surrogates cannot be a file name
        return False
    return not any(unicodedata.category(ch) == "Cc" for ch in name)


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


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
        _write_all(out_fd, chunk)
        offset += len(chunk)


def _mkdir(path: str) -> bool:
    """mkdir 0700; False if it was there already."""
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return False
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirCourier:
    """Delivers into Maildir++ mailboxes (implements `hato.model.Courier`).

    `recipient.address` is the mailbox (after alias resolution): ``user@domain`` is
    ``mailboxes_root/domain/user`` (both lower-cased), created 0700 on first delivery.
    """

    def __init__(
        self, mailboxes_root: Path, hostname: str, *, clock: Clock, max_threads: int = 8
    ) -> None:
        self._root = str(mailboxes_root)
        self._host = _escape_host(hostname)
        self._hostname = hostname
        self._clock = clock
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._known: set[str] = set()  # mailbox dirs seen to exist (skips the mkdirs)

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        if not recipients:
            return []
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_threads, thread_name_prefix="maildir")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._deliver_sync, message, recipients)

    def close(self) -> None:
        """Stop the worker threads (waits for running deliveries)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the worker (runs in a thread) ------------------------------------------------------

    def _deliver_sync(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient]
    ) -> list[Outcome]:
        started = self._clock.monotonic()
        outcomes: list[Outcome | None] = [None] * len(recipients)
        pending: dict[str, list[int]] = {}  # new/ dir -> indexes of recipients renamed into it
        try:
            body_fd = os.open(message.body_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return self._all_failed(message, recipients, exc)
        try:
            body_size = os.fstat(body_fd).st_size
            body = os.read(body_fd, body_size) if body_size <= SMALL_BODY else None
            if body is not None and len(body) != body_size:
                raise OSError(errno.EIO, "short read of the body file")
            # "replace": a stray surrogate from the wire must not make delivery raise.
            head = f"Return-Path: {format_path(message.mail_from)}\r\n".encode("utf-8", "replace")
            for i, rcpt in enumerate(recipients):
                try:
                    new_dir = self._deliver_one(message, rcpt, head, body_fd, body, body_size)
                except _TempFailure as failure:
                    outcomes[i] = TempFailed(failure.reply)
                except OSError as exc:
                    self._log_failure(message, rcpt, exc)
                    outcomes[i] = TempFailed(_reply_for(exc))
                else:
                    if new_dir is None:
                        outcomes[i] = PermFailed(BAD_MAILBOX)
                    else:
                        pending.setdefault(new_dir, []).append(i)
        except OSError as exc:  # the body file could not be read
            return self._all_failed(message, recipients, exc)
        finally:
            os.close(body_fd)
        for new_dir, indexes in pending.items():
            outcome: Outcome
            try:
                _fsync_dir(new_dir)
                outcome = Delivered("maildir")
            except OSError as exc:
                # The file may be in new/ already; a retry renames onto the same name.
                log.warning(logfmt("maildir.fsync_failed", queue_id=message.queue_id, error=exc))
                outcome = TempFailed(_reply_for(exc))
            for i in indexes:
                if outcomes[i] is None:
                    outcomes[i] = outcome
        if log.isEnabledFor(logging.DEBUG):
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 3)
            log.debug(
                logfmt(
                    "maildir.delivered",
                    queue_id=message.queue_id,
                    recipients=len(recipients),
                    ms=elapsed_ms,
                )
            )
        return [o if o is not None else TempFailed(LOCAL_ERROR) for o in outcomes]

    def _all_failed(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient], exc: OSError
    ) -> list[Outcome]:
        log.warning(logfmt("maildir.body_failed", queue_id=message.queue_id, error=exc))
        reply = _reply_for(exc)
        return [TempFailed(reply) for _ in recipients]

    def _log_failure(self, message: QueuedMessage, rcpt: QueuedRecipient, exc: OSError) -> None:
        log.warning(
            logfmt(
                "maildir.failed",
                queue_id=message.queue_id,
                row=rcpt.row_id,
                mailbox=rcpt.address,
                error=exc,
            )
        )

    def _mailbox_dir(self, rcpt: QueuedRecipient) -> str | None:
        local = rcpt.address.local.lower()
        domain = rcpt.address.domain.lower()
        if not is_safe_mailbox_name(local) or not is_safe_mailbox_name(domain, _MAX_DOMAIN):
            return None  # path traversal is impossible: never a directory outside the root
        return f"{self._root}/{domain}/{local}"

    def _deliver_one(
        self,
        message: QueuedMessage,
        rcpt: QueuedRecipient,
        head: bytes,
        body_fd: int,
        body: bytes | None,
        body_size: int,
    ) -> str | None:
        """Write one copy; return its new/ dir (to fsync), or None for a bad mailbox name."""
        mailbox = self._mailbox_dir(rcpt)
        if mailbox is None:
            return None
        address = f"{rcpt.address.local.lower()}@{rcpt.address.domain.lower()}"
        header = head + f"Delivered-To: {address}\r\n".encode() + message.prefix
        base = base_name(message, rcpt, self._hostname)
        name = f"{base},S={len(header) + body_size}"
        new_dir = mailbox + "/new"
        if (rcpt.recovered or rcpt.attempts > 0) and self._already_there(mailbox, base, name):
            return new_dir
        tmp_path = f"{mailbox}/tmp/{name}"
        fd = self._open_tmp(mailbox, tmp_path)
        try:
            try:
                if body is not None:
                    _write_all(fd, header + body)
                else:
                    _write_all(fd, header)
                    _copy_body(fd, body_fd, body_size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp_path, f"{new_dir}/{name}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return new_dir

    def _open_tmp(self, mailbox: str, tmp_path: str) -> int:
        if mailbox in self._known:
            try:
                return os.open(tmp_path, _OPEN_FLAGS, _FILE_MODE)
            except FileNotFoundError:
                self._known.discard(mailbox)  # removed behind our back: make it again
        self._make_mailbox(mailbox)
        self._known.add(mailbox)
        return os.open(tmp_path, _OPEN_FLAGS, _FILE_MODE)

    def _make_mailbox(self, mailbox: str) -> None:
        """Create root, domain and mailbox dirs and tmp/ new/ cur/, each 0700 (only the
        missing ones), and fsync each parent whose entries changed."""
        os.makedirs(self._root, mode=_DIR_MODE, exist_ok=True)
        domain_dir = os.path.dirname(mailbox)
        changed: list[str] = []
        for path, parent in ((domain_dir, self._root), (mailbox, domain_dir)):
            if _mkdir(path):
                changed.append(parent)
        made = [_mkdir(f"{mailbox}/{sub}") for sub in ("tmp", "new", "cur")]
        if any(made):
            changed.append(mailbox)
        for path in changed:
            _fsync_dir(path)  # new directory entries must survive a crash too

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
