"""Dropping root for real: each switch runs in a child process (a drop cannot be undone),
as root, to the system's `nobody`; the results are what that process could and could not do."""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hato.server.privileges import PrivilegeError, drop_privileges, lookup_identity

NOBODY = "nobody"
ROOT = os.geteuid() == 0


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


needs_root = pytest.mark.skipif(
    not ROOT or not _exists(NOBODY), reason="switching users needs root and a 'nobody' user"
)

# The child: drop, then report who it is and what it can do, as one JSON line.
CHILD = """
import json, os, sys
from pathlib import Path
from hato.server.privileges import PrivilegeError, drop_privileges
args = json.loads(sys.argv[1])
os.setgroups([0])  # root's supplementary groups: they must not survive the drop
def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\\n")
try:
    for user, group in args["steps"]:
        who = drop_privileges(user, group, data_dir=Path(args["data_dir"]))
except PrivilegeError as exc:
    report(error=str(exc), uid=os.getuid())
    sys.exit(3)
try:
    (Path(args["data_dir"]) / "written").write_text("ok")
    wrote = True
except OSError:
    wrote = False
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
report(
    uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), egid=os.getegid(),
    saved=list(os.getresuid()), groups=sorted(os.getgroups()), wrote=wrote, regained=regained,
    user=who.user if who else None,
)
"""


def child(data_dir: Path, *steps: tuple[str | None, str | None]) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"data_dir": str(data_dir), "steps": steps})],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return done.returncode, json.loads(lines[-1])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="hato-priv-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def data_dir_of(top: Path, owner: str | None) -> Path:
    """DATA_DIR with a queue directory and a file in it, as `hato serve` leaves it."""
    data = top / "data"
    (data / "queue" / "messages").mkdir(parents=True, mode=0o700)
    (data / "users.db").write_text("")
    (data / "queue" / "queue.db").write_text("")
    if owner is not None:
        uid = pwd.getpwnam(owner).pw_uid
        for path in [data, *data.rglob("*")]:
            os.chown(path, uid, -1)
    return data


@needs_root
def test_root_becomes_nobody_for_good(shared_dir: Path) -> None:
    nobody = pwd.getpwnam(NOBODY)
    code, seen = child(data_dir_of(shared_dir, NOBODY), (NOBODY, None))
    assert code == 0, seen
    assert seen["uid"] == seen["euid"] == nobody.pw_uid
    assert seen["saved"] == [nobody.pw_uid] * 3
    assert seen["gid"] == seen["egid"] == nobody.pw_gid
    assert seen["groups"] == sorted(set(os.getgrouplist(NOBODY, nobody.pw_gid)))
    assert seen["wrote"] is True
    assert seen["regained"] is False
    assert seen["user"] == NOBODY


@needs_root
def test_an_explicit_group_is_used_instead_of_the_users_own(shared_dir: Path) -> None:
    group = next(g for g in ("daemon", "nogroup", "users") if _group(g) is not None)
    code, seen = child(data_dir_of(shared_dir, NOBODY), (NOBODY, group))
    assert code == 0, seen
    assert seen["gid"] == seen["egid"] == _group(group)


def _group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@needs_root
def test_a_data_dir_owned_by_root_stops_start_up_with_the_fix(shared_dir: Path) -> None:
    data = data_dir_of(shared_dir, None)
    code, seen = child(data, (NOBODY, None))
    assert code == 3
    error = str(seen["error"])
    assert f"server.data_dir: {data} is not writable by user 'nobody'" in error
    assert "fix: chown -R nobody" in error and str(data) in error


@needs_root
def test_one_root_owned_file_deep_inside_is_found(shared_dir: Path) -> None:
    data = data_dir_of(shared_dir, NOBODY)
    os.chown(data / "queue" / "queue.db", 0, 0)
    code, seen = child(data, (NOBODY, None))
    assert code == 3
    assert str(data / "queue" / "queue.db") in str(seen["error"])


@needs_root
def test_already_the_target_user_is_fine_and_another_one_is_refused(shared_dir: Path) -> None:
    data = data_dir_of(shared_dir, NOBODY)
    code, seen = child(data, (NOBODY, None), (NOBODY, None))
    assert code == 0, seen
    code, seen = child(data, (NOBODY, None), ("daemon", None))
    assert code == 3
    assert "cannot become 'daemon': hato runs as 'nobody', not root" in str(seen["error"])


@needs_root
def test_root_without_a_user_stays_root_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hato"):
        assert drop_privileges(None, None, data_dir=tmp_path) is None
    assert os.geteuid() == 0
    assert "event=running-as-root" in caplog.text


def test_a_group_without_a_user_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrivilegeError, match=r"server\.group: needs server.user"):
        drop_privileges(None, "nogroup", data_dir=tmp_path)


def test_unknown_user_and_group_are_named() -> None:
    with pytest.raises(PrivilegeError, match=r"server\.user: no user 'hato-nosuchuser'"):
        lookup_identity("hato-nosuchuser")
    with pytest.raises(PrivilegeError, match=r"server\.group: no group 'hato-nosuchgroup'"):
        lookup_identity("root", "hato-nosuchgroup")


def test_lookup_gives_the_primary_group_by_default() -> None:
    me = pwd.getpwuid(os.getuid())
    identity = lookup_identity(me.pw_name)
    assert (identity.uid, identity.gid) == (me.pw_uid, me.pw_gid)
