"""`hato user held` and `hato user release` on DATA_DIR/limits.db, and `hato user blocked` and
`hato user unblock` on DATA_DIR/authlimit.db, with the server stopped; and as root in a data
directory its server's user owns (a link there does not lead root astray)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hato.cli import main
from hato.policy import LIMITS_DB
from hato.policy.authlimit import AuthThrottleSettings
from hato.policy.authlimit_sqlite import AUTHLIMIT_DB, SqliteAuthThrottle
from hato.policy.ratelimit import open_limits
from kit.clock import FakeClock
from kit.config import CLI, command_workdir

NOBODY = 65534
Y2100 = 4102444800.0  # 2100-01-01T00:00:00Z: a hold that has not ended, whenever this runs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def hold(path: Path, *holds: tuple[str, float]) -> None:
    db = open_limits(path)
    try:
        for user, until in holds:
            db.execute('INSERT INTO account ("user", held_until) VALUES (?, ?)', (user, until))
        db.execute("INSERT INTO sent (user, minute, recipients) VALUES ('bob@example.org', 1, 9)")
    finally:
        db.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = open_limits(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_held_and_release_with_the_server_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = command_workdir(tmp_path, monkeypatch)
    code, out, err = run(capsys, "user", "held")
    assert (code, out) == (1, "") and "no data directory" in err
    (work / "data").mkdir()
    db = work / "data" / LIMITS_DB
    assert run(capsys, "user", "held") == (0, "", f"no user is held (in {db})\n")
    assert not db.exists()  # a look does not make the file
    assert run(capsys, "user", "release", "bob@example.org") == (
        1,
        "",
        f"hato: bob@example.org is not held (in {db}; see: hato user held); nothing changed\n",
    )
    hold(db, ("bob@example.org", Y2100), ("alice@example.org", math.inf), ("old@example.org", 1))
    assert run(capsys, "user", "held") == (
        0,
        "alice@example.org held until released (hold_time = 0)\n"
        "bob@example.org held until 2100-01-01T00:00:00+00:00\n",
        "",
    )
    code, out, err = run(capsys, "user", "release", "BOB@example.org")
    assert (code, out) == (0, f"released bob@example.org: their mail is accepted again (in {db})\n")
    assert f" INFO hato.cli: event=admin-unhold user=bob@example.org uid={os.getuid()}\n" in err
    assert rows(db, "SELECT user FROM account ORDER BY user") == [
        ("alice@example.org",),
        ("old@example.org",),
    ]
    assert rows(db, "SELECT recipients FROM sent") == [(0,)]  # the spike count starts anew
    assert run(capsys, "user", "release", "old@example.org")[0] == 1  # its hold has ended
    assert ("old@example.org",) in rows(db, "SELECT user FROM account")  # nothing changed
    code, out, err = run(capsys, "user", "release", "not an address")
    assert (code, out) == (1, "") and "is not an address" in err


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory the server's user (nobody) can reach (pytest's tmp_path is root's 0700)."""
    where = Path(tempfile.mkdtemp(prefix="hato-holds-"))
    where.chmod(0o711)
    yield where
    shutil.rmtree(where)


def _hato(place: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`hato ARGV` in a new process (it becomes nobody for good), in `place`."""
    code = "import sys; from hato.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATO_")}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=place,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_root_acts_as_the_data_directory_s_owner(place: Path) -> None:
    (place / "hato.toml").write_text(CLI)
    data = place / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    # A link the server's user planted to a database only root may read: root following it
    # would list (and release) holds the server never made.
    secret = place / "root-only.db"
    hold(secret, ("bob@example.org", Y2100))
    secret.chmod(0o600)
    (data / LIMITS_DB).symlink_to(secret)
    for argv in (("user", "held"), ("user", "release", "bob@example.org")):
        done = _hato(place, *argv)
        assert done.returncode == 1 and "bob@example.org" not in done.stdout, done
        assert "unable to open database file" in done.stderr, done.stderr
    assert rows(secret, "SELECT user FROM account") == [("bob@example.org",)]
    # The server's own file: released as its owner, and what SQLite makes beside it is theirs.
    (data / LIMITS_DB).unlink()
    hold(data / LIMITS_DB, ("bob@example.org", Y2100))
    os.chown(data / LIMITS_DB, NOBODY, NOBODY)
    done = _hato(place, "user", "release", "bob@example.org")
    assert done.returncode == 0, done.stderr
    assert rows(data / LIMITS_DB, "SELECT user FROM account") == []
    assert {p.stat().st_uid for p in data.iterdir()} == {NOBODY}  # -wal, -shm included


def test_blocked_and_unblock_with_the_server_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On DATA_DIR/authlimit.db, where the workers keep AUTH blocks across restarts."""
    work = command_workdir(tmp_path, monkeypatch)
    (work / "data").mkdir()
    db = work / "data" / AUTHLIMIT_DB
    none = f"no client is blocked for failed AUTHs (in {db})\n"
    assert run(capsys, "user", "blocked") == (0, "", none)
    assert not db.exists()  # a look does not make the file
    throttle = SqliteAuthThrottle(FakeClock(Y2100), AuthThrottleSettings(max_failures=1), db)
    try:
        throttle.record_failure("192.0.2.7", None)
        throttle.record_failure("2001:db8:1:2::5", None)
    finally:
        throttle.close()
    assert run(capsys, "user", "blocked") == (
        0,
        "192.0.2.7 blocked until 2100-01-01T00:15:00+00:00\n"
        "2001:db8:1:2::/64 blocked until 2100-01-01T00:15:00+00:00\n",
        "",
    )
    code, out, err = run(capsys, "user", "unblock", "2001:db8:1:2::77")  # any address of it
    assert (code, out) == (
        0,
        f"unblocked 2001:db8:1:2::/64: it may authenticate again at once (in {db})\n",
    )
    assert (
        f" INFO hato.cli: event=admin-unblock client=2001:db8:1:2::/64 uid={os.getuid()}\n" in err
    )
    assert run(capsys, "user", "blocked")[1] == (
        "192.0.2.7 blocked until 2100-01-01T00:15:00+00:00\n"
    )
    assert run(capsys, "user", "unblock", "192.0.2.8") == (
        1,
        "",
        f"hato: 192.0.2.8 is not blocked (in {db}; see: hato user blocked); nothing changed\n",
    )
    code, out, err = run(capsys, "user", "unblock", "bob@example.org")
    assert (code, out) == (1, "") and "bob@example.org: not an IP address" in err
