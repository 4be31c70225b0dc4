"""[local] mailbox_owner checked at start: a user that exists, is not root, can be given the
files by us, and can reach the mailboxes root through its parent directories."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from hato.delivery.owner import OwnerError, resolve_owner

NOBODY = pwd.getpwnam("nobody")


def test_unknown_user_and_root_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OwnerError, match=r"local\.mailbox_owner: no user 'no-such-user-x'"):
        resolve_owner("no-such-user-x", tmp_path / "vmail")
    with pytest.raises(OwnerError, match="must not be root"):
        resolve_owner("root", tmp_path / "vmail")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_a_closed_parent_directory_is_named_with_the_fix() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="hato-owner-"))  # pytest's own is 0700
    tmp_path.chmod(0o755)
    closed = tmp_path / "data"
    closed.mkdir(mode=0o700)
    with pytest.raises(OwnerError, match=rf"{closed} is closed to it.*chmod o\+x {closed}"):
        resolve_owner("nobody", closed / "mailboxes")
    owner = resolve_owner("nobody", tmp_path / "vmail")
    assert (owner.uid, owner.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    shutil.rmtree(tmp_path)
