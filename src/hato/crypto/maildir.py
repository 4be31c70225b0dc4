"""Encrypt the mail already stored in a Maildir, in place and crash-safe.

For each file in ``cur/`` and ``new/``: read it, encrypt it to the user's key, write the result
to ``tmp/`` (0600 like the original's mode, its mtime kept: Maildir readers take it as the
arrival time), fsync it, and rename it over the original; then fsync the directory. A rename is
atomic, so at every instant the file under its name is either the original or the encrypted
copy: a crash loses nothing, and no plaintext copy exists besides originals not yet done. Left
over ``tmp/*.hato-encrypt`` files hold only ciphertext and are removed on the next run.

File names stay what they are: Dovecot keys its UIDs on the name up to ``:2,`` (its
dovecot-uidlist lists them), and a new name is a new message every IMAP client downloads again.
Only a ``,S=size`` (Maildir++) must change with the content, or Dovecot fails to read the
message ("Cached message size smaller than expected"). So after a folder's files are encrypted,
the stale sizes are fixed in one step under Dovecot's own lock (``dovecot-uidlist.lock``): each
file is renamed to its new size and its line in dovecot-uidlist is given the new name, so it
keeps its UID; dovecot.index.cache, which still describes the plaintext, is removed (Dovecot
rebuilds it). A crash before that step leaves encrypted files with stale sizes, which the next
run fixes. The files keep their owner (the mailbox owner Dovecot runs as) and mode. Maildir++
folders (``.Junk`` and others) are done like the inbox.

Not safe against a reader renaming the same file at the same moment (an IMAP server changing
flags): a file that changed between our read and our rename is left for the next run, but the
window between that check and the rename remains; run it while the user is not connected.

Must not import anything of hato but model and durable (fsync of files and directories).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hato.crypto.encrypt import EncryptionError, encrypt_message
from hato.crypto.keys import PublicKey
from hato.durable.files import fsync_dir, write_all

TMP_SUFFIX = ".hato-encrypt"
# Dovecot's files in a Maildir (https://doc.dovecot.org/admin_manual/mailbox_formats/maildir/).
UIDLIST = "dovecot-uidlist"
UIDLIST_LOCK = "dovecot-uidlist.lock"
INDEX_CACHE = "dovecot.index.cache"
_SIZE = re.compile(r",S=\d+")

Encrypt = Callable[[bytes, PublicKey], bytes]


@dataclass(frozen=True, slots=True)
class MaildirResult:
    encrypted: tuple[str, ...]  # file names after encryption
    already: tuple[str, ...]  # already encrypted, left as they were
    failed: tuple[tuple[str, str], ...]  # (file name, why)


def encrypt_maildir(
    mailbox: Path, key: PublicKey, *, now: dt.datetime, encrypt: Encrypt | None = None
) -> MaildirResult:
    """Encrypt every message in `mailbox` (a Maildir and its Maildir++ folders) to `key`."""
    if key.expired(now):
        raise EncryptionError(f"the key {key.fingerprint} of {key.address} has expired")
    run: Encrypt = encrypt or (lambda data, k: encrypt_message(data, k, now=now))
    done: list[str] = []
    already: list[str] = []
    failed: list[tuple[str, str]] = []
    subfolders = (p for p in mailbox.glob(".*") if p.is_dir() and (p / "cur").is_dir())
    folders = [mailbox, *sorted(subfolders)]
    for folder in folders:
        prefix = "" if folder == mailbox else f"{folder.name}/"
        sizes: dict[tuple[str, str], int] = {}  # (sub, name) -> the size its content has now
        tmp = folder / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        for stale in tmp.glob("*" + TMP_SUFFIX):
            stale.unlink(missing_ok=True)  # ciphertext from an interrupted run
        for sub in ("cur", "new"):
            if not (folder / sub).is_dir():
                continue
            for name in sorted(os.listdir(folder / sub)):
                if name.startswith("."):
                    continue  # Maildir: dot files are not messages
                try:
                    result = _one(folder / sub, name, tmp, key, run)
                except (OSError, EncryptionError) as exc:
                    failed.append((f"{prefix}{sub}/{name}", str(exc)))
                    continue
                if result is None:
                    failed.append((f"{prefix}{sub}/{name}", "changed while being encrypted"))
                    continue
                (done if result[1] else already).append(f"{prefix}{sub}/{name}")
                sizes[(sub, name)] = result[0]
        try:
            renamed = _fix_sizes(folder, sizes)
        except OSError as exc:
            failed.append((f"{prefix or './'}", f"sizes in the names not fixed: {exc}"))
            continue
        done = [_renamed(n, prefix, renamed) for n in done]
        already = [_renamed(n, prefix, renamed) for n in already]
    return MaildirResult(tuple(done), tuple(already), tuple(failed))


def _renamed(shown: str, prefix: str, renamed: dict[str, str]) -> str:
    if not shown.startswith(prefix):
        return shown
    sub, _, name = shown[len(prefix) :].partition("/")
    return f"{prefix}{sub}/{renamed.get(f'{sub}/{name}', name)}"


def _one(
    folder: Path, name: str, tmp: Path, key: PublicKey, run: Encrypt
) -> tuple[int, bool] | None:
    """Encrypt one file under its own name; (its size now, whether it was encrypted now), or
    None if it changed meanwhile."""
    path = folder / name
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
    out = run(data, key)
    if out is data or out == data:
        return len(data), False
    tmp_path = tmp / (name.replace(":", "_") + TMP_SUFFIX)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, before.st_uid, before.st_gid)  # the mailbox owner's, as it was
        os.fchmod(fd, before.st_mode & 0o777)
        write_all(fd, out)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    try:
        now = os.stat(path)
    except FileNotFoundError:
        now = None
    if now is None or (now.st_ino, now.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
        os.unlink(tmp_path)  # moved or rewritten by a reader meanwhile: leave it for next time
        return None
    os.rename(tmp_path, path)  # atomic: the name holds the original or the ciphertext
    fsync_dir(folder)
    return len(out), True


def _sized(name: str, size: int) -> str:
    """`name` with its ``,S=`` giving `size` (unchanged when it has none)."""
    base, colon, flags = name.partition(":")
    if not _SIZE.search(base):
        return name
    return _SIZE.sub(f",S={size}", base, count=1) + colon + flags


def _fix_sizes(folder: Path, sizes: dict[tuple[str, str], int]) -> dict[str, str]:
    """Give every stale ``,S=`` its real size, keeping Dovecot's UIDs; returns old -> new
    ("sub/name") of the files renamed."""
    renames = {
        (sub, name): _sized(name, size)
        for (sub, name), size in sizes.items()
        if _sized(name, size) != name
    }
    if not renames:
        return {}
    uidlist = folder / UIDLIST
    lock = folder / UIDLIST_LOCK
    locked = uidlist.exists()
    if locked:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise OSError(f"{lock} exists: Dovecot is using the mailbox; run again") from None
        os.write(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
        os.close(fd)
    try:
        for (sub, name), new in renames.items():
            os.rename(folder / sub / name, folder / sub / new)
        for sub in {sub for sub, _ in renames}:
            fsync_dir(folder / sub)
        if locked:
            bases = {
                name.partition(":")[0]: new.partition(":")[0] for (_, name), new in renames.items()
            }
            _rewrite_uidlist(uidlist, bases)
            (folder / INDEX_CACHE).unlink(missing_ok=True)  # it describes the plaintext
    finally:
        if locked:
            lock.unlink(missing_ok=True)
    return {f"{sub}/{name}": new for (sub, name), new in renames.items()}


def _rewrite_uidlist(uidlist: Path, bases: dict[str, str]) -> None:
    """Rename entries of a dovecot-uidlist (version 3: ``UID [EXT...] :NAME`` lines after the
    header), written whole and renamed into place as Dovecot does."""
    lines = uidlist.read_bytes().decode("utf-8", "surrogateescape").split("\n")
    if not lines or not lines[0].startswith("3 "):
        return  # another version: Dovecot gives the renamed files new UIDs
    for i, line in enumerate(lines[1:], start=1):
        head, sep, name = line.partition(" :")
        if sep and name in bases:
            lines[i] = f"{head}{sep}{bases[name]}"
    tmp = uidlist.with_name(uidlist.name + TMP_SUFFIX)
    stat = os.stat(uidlist)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if (stat.st_uid, stat.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, stat.st_uid, stat.st_gid)
        os.fchmod(fd, stat.st_mode & 0o777)
        write_all(fd, "\n".join(lines).encode("utf-8", "surrogateescape"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, uidlist)
    fsync_dir(uidlist.parent)
