"""Who owns the mail files: ``[local] mailbox_owner`` (a vmail-style user) for Dovecot.

Theory of operation. An IMAP server such as Dovecot reads and changes (flags are renames) the
Maildirs as one unprivileged user, and refuses uid 0; so mail written by a Hato running as root
must not stay root's. With a mailbox owner, the Maildir courier gives every directory and file
it makes to that user and its group (fchown before the rename into new/, so no reader ever sees
a file of root's). That needs root, or being that very user already: `resolve_owner` checks
this at start, and that the owner can reach the mailboxes root through its parent directories
(a 0700 data directory would lock it out), and names the fix when it cannot.

Must not import anything of hato but model.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


class OwnerError(Exception):
    """The mailbox owner cannot be used as configured; the message names the fix."""


@dataclass(frozen=True, slots=True)
class MailboxOwner:
    user: str
    uid: int
    gid: int


def resolve_owner(user: str, mailboxes: Path) -> MailboxOwner:
    """The owner's ids, once we know we can give files to them and they can reach them."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OwnerError(
            f"local.mailbox_owner: no user {user!r} on this system; create it "
            f"(useradd --system --home-dir {mailboxes} --shell /usr/sbin/nologin {user})"
        ) from None
    owner = MailboxOwner(user, entry.pw_uid, entry.pw_gid)
    if owner.uid == 0:
        raise OwnerError(
            "local.mailbox_owner: must not be root (IMAP servers refuse uid 0); "
            'use a user of its own, e.g. "vmail"'
        )
    if os.geteuid() not in (0, owner.uid):
        raise OwnerError(
            f"local.mailbox_owner: hato runs as uid {os.geteuid()} and cannot give mail files "
            f"to {user!r}; run hato as root (no [server] user) or as {user!r} itself"
        )
    blocked = closed_parent(mailboxes, owner)
    if blocked is not None:
        raise OwnerError(
            f"local.mailboxes: {mailboxes} cannot be reached by {user!r} ({blocked} is closed "
            f"to it); set local.mailboxes to a directory outside the data directory, e.g. "
            f'"/var/vmail", or allow passing through: chmod o+x {blocked}'
        )
    return owner


def closed_parent(path: Path, owner: MailboxOwner) -> Path | None:
    """The first existing parent of `path` the owner may not pass through (x), or None
    (also `hato dovecot-config`'s check that Dovecot's auth user can run hato)."""
    for parent in reversed(path.parents):
        try:
            info = os.stat(parent)
        except FileNotFoundError:
            return None  # made by us below here, for the owner
        if info.st_uid == owner.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == owner.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None
