"""Encrypt the mail already stored in a Maildir, in place and crash-safe.

For each file in ``cur/`` and ``new/``: read it, encrypt it to the user's key, write the result
to ``tmp/`` (0600 like the original's mode, its mtime kept: Maildir readers take it as the
arrival time), fsync it, and rename it over the original; then fsync the directory. A rename is
atomic, so at every instant the file under its name is either the original or the encrypted
copy: a crash loses nothing, and no plaintext copy exists besides originals not yet done. Left
over ``tmp/*.hato-encrypt`` files hold only ciphertext and are removed on the next run.

When the name carries a size (``,S=size``, Maildir++), a second rename gives it the new size;
a crash between the two leaves an encrypted file with a stale size, which the next run fixes.

Not safe against a reader renaming the same file at the same moment (an IMAP server changing
flags): a file that changed between our read and our rename is left for the next run, but the
window between that check and the rename remains; run it while the user is not connected.

Must not import anything of hato but model.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hato.crypto.encrypt import EncryptionError, encrypt_message
from hato.crypto.keys import PublicKey

TMP_SUFFIX = ".hato-encrypt"
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
    """Encrypt every message in `mailbox` (a Maildir: cur/, new/, tmp/) to `key`."""
    if key.expired(now):
        raise EncryptionError(f"the key {key.fingerprint} of {key.address} has expired")
    run: Encrypt = encrypt or (lambda data, k: encrypt_message(data, k, now=now))
    tmp = mailbox / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    for stale in tmp.glob("*" + TMP_SUFFIX):
        stale.unlink(missing_ok=True)  # ciphertext from an interrupted run
    done: list[str] = []
    already: list[str] = []
    failed: list[tuple[str, str]] = []
    for sub in ("cur", "new"):
        folder = mailbox / sub
        if not folder.is_dir():
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue  # Maildir: dot files are not messages
            try:
                result = _one(folder, name, tmp, key, run)
            except (OSError, EncryptionError) as exc:
                failed.append((f"{sub}/{name}", str(exc)))
                continue
            if result is None:
                failed.append((f"{sub}/{name}", "changed while being encrypted; run again"))
            elif result[1]:
                done.append(f"{sub}/{result[0]}")
            else:
                already.append(f"{sub}/{result[0]}")
    return MaildirResult(tuple(done), tuple(already), tuple(failed))


def _one(
    folder: Path, name: str, tmp: Path, key: PublicKey, run: Encrypt
) -> tuple[str, bool] | None:
    """Encrypt one file; (its final name, whether it was encrypted now), None if it changed."""
    path = folder / name
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
    out = run(data, key)
    if out is data or out == data:
        return _fix_size(folder, name, len(data)), False
    tmp_path = tmp / (name.replace(":", "_") + TMP_SUFFIX)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, before.st_mode & 0o777)
        view = memoryview(out)
        while view:
            view = view[os.write(fd, view) :]
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
    _fsync_dir(folder)
    return _fix_size(folder, name, len(out)), True


def _fix_size(folder: Path, name: str, size: int) -> str:
    """Rename a ``,S=size`` name to the file's real size (Maildir++); returns the final name."""
    base, colon, flags = name.partition(":")
    if not _SIZE.search(base):
        return name
    fixed = _SIZE.sub(f",S={size}", base, count=1) + colon + flags
    if fixed != name:
        os.rename(folder / name, folder / fixed)
        _fsync_dir(folder)
    return fixed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
