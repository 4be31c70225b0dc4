"""A private PostgreSQL (Debian's package) on loopback, for the tests of the PostgreSQL store.

`initdb` into a directory of the test's own, then the `postgres` server itself (no pg_ctl
daemon, no system service, no cluster of postgresql-common): a free loopback port, its unix
socket in the same directory, fsync on (the store's durability is what is tested), a password
for the `hato` role (the DSN carries no password: the tests give it as Hato would get it, from
a file or PGPASSWORD). PostgreSQL refuses to run as root, so when the tests run as root (CI),
the cluster belongs to `nobody` and the server runs as `nobody`.

`stop()` ends it (fast shutdown, SIGINT) and `start()` brings it back on the same port and data:
the tests of "the database is down" use both.
"""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .net import LOOPBACK, free_port

USER = "hato"
PASSWORD = "pg-test-password"
DATABASE = "postgres"
_RUN_AS = "nobody"  # when root: PostgreSQL will not run as root


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and postgres, if any."""
    found = []
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        bindir = Path(path)
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            version = bindir.parent.name
            found.append((int(version) if version.isdigit() else 0, bindir))
    return max(found)[1] if found else None


class PostgresServer:
    """A private cluster in `work`; `dsn` names host, port, user and database, no password."""

    name = "postgres"

    def __init__(self, work: Path, bindir: Path, settings: Sequence[str] = ()) -> None:
        """`settings`: more server settings, "name=value" each (passed as -c)."""
        self.work = work
        self.settings = tuple(settings)
        self.bindir = bindir
        self.data = work / "pgdata"
        self.socket_dir = work / "run"
        self.port = free_port()
        self.log = work / "postgres.log"
        self.password_file = work / "password"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        if os.getuid() == 0:
            entry = pwd.getpwnam(_RUN_AS)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid

    @property
    def dsn(self) -> str:
        return self.dsn_of(DATABASE)

    def dsn_of(self, database: str) -> str:
        return f"host={LOOPBACK} port={self.port} user={USER} dbname={database}"

    def create_database(self, name: str) -> str:
        """A new, empty database (one per test, so tests do not see each other's rows); its
        DSN."""
        self._run(
            str(self.bindir / "psql"),
            "-h",
            LOOPBACK,
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            DATABASE,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f'CREATE DATABASE "{name}"',
            env={"PGPASSWORD": PASSWORD, "PATH": os.environ.get("PATH", "")},
        )
        return self.dsn_of(name)

    def _own(self, path: Path) -> None:
        if self._uid is not None and self._gid is not None:
            os.chown(path, self._uid, self._gid)

    def _run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            user=self._uid,
            group=self._gid,
            extra_groups=[] if self._uid is not None else None,
            cwd=self.work,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout!r} {done.stderr!r}")

    def init(self) -> None:
        """initdb with the `hato` superuser and its password, and the `hato` database."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        pwfile = self.work / "initdb.pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self._own(self.work)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",  # initdb's own files only; the server itself runs with fsync on
        )
        pwfile.unlink()

    def start(self, timeout: float = 60.0) -> None:
        if not self.data.exists():
            self.init()
        self._out = open(self.log, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                LOOPBACK,
                "-k",
                str(self.socket_dir),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
                *(arg for setting in self.settings for arg in ("-c", setting)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            user=self._uid,
            group=self._gid,
            extra_groups=[] if self._uid is not None else None,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres not ready in {timeout:g} s")
            time.sleep(0.1)

    def replica(self, work: Path) -> PostgresServer:
        """A streaming replica of this running server, in `work`, not started: a base backup
        taken with `pg_basebackup -R` (which writes standby.signal and primary_conninfo), the
        same role and password, its own loopback port. `promote()` makes it the primary."""
        replica = PostgresServer(work, self.bindir)
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)
        replica.socket_dir.mkdir(exist_ok=True)
        replica._own(replica.socket_dir)
        replica.password_file.write_text(PASSWORD + "\n")
        replica.password_file.chmod(0o600)
        replica._own(work)
        replica._run(
            str(self.bindir / "pg_basebackup"),
            *("-h", LOOPBACK, "-p", str(self.port), "-U", USER),
            *("-D", str(replica.data), "-R", "-X", "stream", "--no-sync"),
            "--checkpoint=fast",  # a spread checkpoint makes the backup wait a minute or more
            env={"PGPASSWORD": PASSWORD, "PATH": os.environ.get("PATH", "")},
        )
        return replica

    def promote(self) -> None:
        """A replica becomes a primary (`pg_ctl promote`, waiting until it accepts writes)."""
        self._run(str(self.bindir / "pg_ctl"), "promote", "-D", str(self.data), "-w", "-t", "60")

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-q"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: abort sessions, checkpoint
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
