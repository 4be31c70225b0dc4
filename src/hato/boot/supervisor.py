"""`hato serve` (`serve`: logging, the event loop, the data directory's lock, then hato.boot.app's
`run` in this process or in workers), and the supervisor of several server processes on one
data directory (`[server] workers`, by default one per CPU; issue 2: one process per core).

Theory of operation: the supervisor binds every listener itself, recovers the queue once, then
forks the workers. Each worker runs the whole server (sessions, queue writer, runner) on the
sockets it inherits: every worker serves every listener, mx and submission (587, 465) alike,
and the first also the control socket, the local submission socket and the endpoints (web,
metrics); what limits a client is shared through the data directory (issue 15 item 1:
authenticated submission was one worker's CPU alone).
Which worker accepts a connection is not left to the kernel's wake-up order alone: each
publishes its live connections on a board made here before the fork (an anonymous shared
mapping), and one past its share leaves a new connection to the others for 2 ms
(server/spread.py; issue 15 item 2: a burst of connections went mostly to one worker).
Workers commit to the one SQLite queue (WAL; their group commits take turns under a lock
file, see queue/writer.py), and each delivers what it accepted;
retries go to whichever worker leases them first. A worker that dies is replaced, after its
leased rows are freed and marked recovered (exactly once), by one that runs the configuration
in force: the last reload's that the workers applied (boot/reload.py InForce), not start-up's.
Workers die with the supervisor (PR_SET_PDEATHSIG), so a SIGKILL of the server leaves no
orphan holding the data directory. Signals: SIGTERM/SIGINT and SIGHUP are passed on to the
workers; the supervisor reads the file again at SIGHUP too, for the workers it starts later.
A worker's `hato reload` reaches the supervisor through a pipe (boot/reload.py ReloadRequests:
a worker that dropped root may not signal it).

Limits hold across the workers: a listener's connections (per listener and per client)
are counted in one table every worker maps (policy/connections.py), made here at start, a
dead worker's counts zeroed before it is started again; connection rates and greylisting in
screen.db, sending limits in limits.db, AUTH failures, blocks and known clients in authlimit.db
(policy/authlimit_sqlite.py; one process alone keeps them in memory, policy/authlimit.py).
The counters of /metrics and `hato status` are every worker's: each publishes its own into
DATA_DIR/figures/, emptied here at start (through descriptors: the directory is the server
user's), and a dead worker's last are taken over by its replacement (server/workerfigures.py).

May import every room (it is part of the composition root).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import resource
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hato.accounts import UserStore
from hato.boot.app import WorkerRole, run, server_owner
from hato.boot.build import build_tls
from hato.boot.logsetup import configure_logging
from hato.boot.owner import root_in_users_data_dir
from hato.boot.predrop import preload
from hato.boot.process import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    StartupError,
    listen_socket,
    usable_cpus,
)
from hato.boot.reload import InForce, ReloadRequests
from hato.boot.store import check_store
from hato.crypto import KeyStore
from hato.directory.srs import load_key
from hato.model import Address, SystemClock, logfmt
from hato.policy import LIMITS_DB, connections
from hato.policy.authlimit_sqlite import AUTHLIMIT_DB, open_authlimit
from hato.policy.greylist import SCREEN_DB, ScreenStore
from hato.policy.ratelimit import open_limits
from hato.queue import recover_offline, release_leases
from hato.server import workerfigures
from hato.server.datadir import DataDirError, locked
from hato.server.privileges import PrivilegeError, acting_as_owner, lookup_identity
from hato.server.spread import LoadBoard

if TYPE_CHECKING:
    from hato.config import Settings

log = logging.getLogger("hato.supervisor")

PR_SET_PDEATHSIG = 1
RESTART_LIMIT = 5  # worker deaths within RESTART_WINDOW before the supervisor gives up
RESTART_WINDOW = 60.0


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers then outlive a SIGKILLed parent
        log.warning(logfmt("pdeathsig-unavailable"))


def _node_id(index: int) -> str:
    return f"{socket.gethostname()}:w{index}"


def _start_worker(
    settings: Settings,
    source: str,
    index: int,
    sockets: dict[int, socket.socket],
    board: LoadBoard,
    reloads: ReloadRequests,
) -> int:
    logging.getLogger("hato").handlers[0].flush()  # nothing buffered may be written twice
    # The worker starts with SIGHUP blocked: a reload asked while it starts (its default action
    # would end it) waits until app.run can reload, which unblocks it.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return pid
    code = EX_SOFTWARE
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGIO):
            signal.signal(sig, signal.SIG_DFL)
        os.close(reloads.read_end)  # the supervisor's (its SIGIO owner)
        handler = configure_logging(settings.server.log_format, settings.server.log_level)
        log.info(logfmt("worker-started", worker=index, pid=os.getpid(), listeners=len(sockets)))
        role = WorkerRole(index, sockets, _node_id(index), board, reloads)
        asyncio.run(run(settings, source, role))
        code = EX_OK
        handler.flush()
    except StartupError as exc:  # one line, and its exit code (78 stops the supervisor)
        log.error(logfmt("startup-failed", worker=index, detail=str(exc)))
        logging.getLogger("hato").handlers[0].flush()
        if index == 0:
            print(f"hato: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:  # the one catch-all of a worker: log, exit non-zero
        log.exception(logfmt("worker-failed", worker=index))
        logging.getLogger("hato").handlers[0].flush()
    finally:
        os._exit(code)


def prepare_shared_files(settings: Settings, data_dir: Path, workers: int) -> None:
    """Make, once and before any worker runs, what workers would otherwise race to create:
    the user, key and limits databases (switching SQLite to WAL needs the file to itself) and the
    self-signed certificate (two workers writing key and certificate could mix the pairs).
    As the data directory's owner (the server's user), not as root: a link that user put there
    must not make root write a system file (server/privileges.py)."""
    with acting_as_owner(data_dir):
        users = UserStore(
            data_dir / "users.db", scram_iterations=settings.auth.stored_scram_iterations
        )
        users.exists(Address("postmaster", "invalid"))  # creates the file and its schema
        users.close()
        KeyStore.in_data_dir(data_dir).close()
        open_limits(data_dir / LIMITS_DB).close()  # sending limits, shared by the workers
        _prepare_connection_table(settings, data_dir, workers)  # connection limits, too
        open_authlimit(data_dir / AUTHLIMIT_DB).close()  # AUTH failures and blocks, too
        if settings.local.srs:
            load_key(data_dir)  # the SRS key every worker signs with
        if settings.screen.active:  # greylisting and connection rates, shared by the workers
            ScreenStore(SystemClock(), data_dir / SCREEN_DB).close()
    try:  # what /metrics adds up: made and emptied without following the server user's links
        workerfigures.prepare(data_dir, server_owner(settings))
    except OSError as exc:
        figures = data_dir / workerfigures.FIGURES_DIR
        raise StartupError(
            f"server.data_dir: cannot prepare {figures}: {exc.strerror}; remove it", EX_CANTCREAT
        ) from exc
    build_tls(settings, data_dir)  # as root: [tls] cert and key may be root's alone


def _prepare_connection_table(settings: Settings, data_dir: Path, workers: int) -> None:
    """The listeners' shared connection counts, sized for their `max_connections` (as the
    data directory's owner, acting_as_owner). The SQLite ledger of earlier versions goes."""
    table = data_dir / connections.CONNECTIONS_TABLE
    limits = [listener.max_connections for listener in settings.listeners]  # mx and submission
    try:
        connections.reset(table, slots=connections.table_slots(limits), workers=workers)
    except OSError as exc:
        raise StartupError(
            f"server.data_dir: cannot prepare {table}: {exc.strerror}; remove it", EX_CANTCREAT
        ) from exc
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / (connections.OLD_CONNECTIONS_DB + suffix)).unlink()


def _give_to_server_user(settings: Settings, data_dir: Path) -> None:
    """What the supervisor made as root (the databases, the queue's files, the self-signed
    certificate) belongs to `[server] user`, whom the workers become (issue 13: they found
    them root's and stopped). Through descriptors, never following a link: the directory is
    that user's, who could have put a link to /etc (or to /etc/shadow) in place of queue/ or
    of a file; and a file with other links (a hard link to a system file) is not given."""
    if settings.server.user is None or os.geteuid() != 0:
        return
    try:
        who = lookup_identity(settings.server.user, settings.server.group)
    except PrivilegeError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    top = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _give_entries(top, (who.uid, who.gid), skip={"mailboxes"})
        for name in ("queue", "tls"):
            try:
                below = os.open(name, _NOFOLLOW_DIR, dir_fd=top)
            except OSError:
                continue  # none, or a link in its place (ELOOP): not followed
            try:
                _give_entries(below, (who.uid, who.gid))
            finally:
                os.close(below)
    finally:
        os.close(top)


_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW_ANY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _give_entries(
    directory: int, owner: tuple[int, int], skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """Root's regular files and directories in `directory` (a descriptor) become `owner`'s."""
    for name in os.listdir(directory):
        if name in skip:
            continue
        try:
            fd = os.open(name, _NOFOLLOW_ANY, dir_fd=directory)
        except OSError:
            continue  # gone, or a link (ELOOP), a socket: nothing to give
        try:
            st = os.fstat(fd)  # what is given is what was checked: no swap in between
            if st.st_uid == 0 and (
                stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)
            ):  # not a hard link's other name (a system file's)
                os.fchown(fd, *owner)
        finally:
            os.close(fd)


def supervise(settings: Settings, source: str, workers: int, handler: logging.Handler) -> int:
    data_dir = Path(settings.server.data_dir)
    try:
        sockets = {
            n: listen_socket(listener.host, listener.port)
            for n, listener in enumerate(settings.listeners)
        }
    except StartupError as exc:
        log.error(logfmt("startup-failed", detail=str(exc)))
        handler.flush()
        print(f"hato: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        _give_to_server_user(settings, data_dir)  # root's files of an older version
        # The data directory is the server user's: root works in it as that user (no link
        # planted there makes root write elsewhere, server/privileges.py).
        with acting_as_owner(data_dir):
            problems = recover_offline(data_dir / "queue", time.time())
        for problem in problems:
            log.error(logfmt("queue-problem", detail=problem))
        prepare_shared_files(settings, data_dir, workers)
        _give_to_server_user(settings, data_dir)
    except StartupError as exc:
        log.error(logfmt("startup-failed", detail=str(exc)))
        handler.flush()
        print(f"hato: {exc}", file=sys.stderr)
        return exc.exit_code
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    in_force = InForce(settings, source)  # what a replacement worker starts with

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGIO:  # a worker's `hato reload` (ReloadRequests)
            if not reloads.drain():
                return
            signum = signal.SIGHUP
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
        if signum == signal.SIGHUP:
            with acting_as_owner(data_dir):  # as the workers read it: as the server's user
                in_force.reload()

    preload(settings)  # what each worker would import after its privilege drop: once, shared
    # Python's docs on gc.freeze: before fork, so the collector of a worker does not touch
    # (and copy) the pages it shares with the supervisor.
    gc.freeze()
    board = LoadBoard(workers)  # before the fork: every worker maps the same counts
    reloads = ReloadRequests()
    for index in range(workers):
        children[_start_worker(settings, source, index, sockets, board, reloads)] = index
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGIO):
        signal.signal(sig, forward)
    reloads.arm()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by serve()
    log.info(logfmt("supervising", workers=workers, pid=os.getpid()))
    deaths: list[float] = []
    status = EX_OK
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code > 0 else 0)
            continue
        if code == EX_CONFIG:
            # The configuration cannot work (the worker said why): restarting will not help.
            # The first worker, which prints the one line for the admin, fails the same way
            # and ends by itself; the others are stopped.
            log.error(logfmt("giving-up", detail="a worker cannot start as configured"))
            stopping, status = True, EX_CONFIG
            for other, number in list(children.items()):
                if number != 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other, signal.SIGTERM)
            continue
        log.error(logfmt("worker-died", worker=index, pid=pid, code=code))
        # Its connections died with it: they no longer count against the limits.
        with acting_as_owner(data_dir):
            connections.forget_worker(data_dir / connections.CONNECTIONS_TABLE, index)
        board.clear(index)  # nor in the spreading of new ones (server/spread.py)
        # What it counted stays in the totals: its replacement takes it over (as the server's
        # user: root does not read or write in DATA_DIR/figures/, server/workerfigures.py).
        with acting_as_owner(data_dir):
            released = release_leases(data_dir / "queue", _node_id(index), time.time())
        if released:
            log.info(logfmt("leases-released", worker=index, rows=released))
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < RESTART_WINDOW] + [now]
        if len(deaths) > RESTART_LIMIT:
            log.error(logfmt("giving-up", detail="workers keep dying"))
            forward(signal.SIGTERM, None)
            stopping, status = True, EX_SOFTWARE
            continue
        time.sleep(0.5)
        if stopping:
            continue  # SIGTERM came during the pause: it was passed on to the others only
        asked = in_force.generation
        pid = _start_worker(in_force.settings, source, index, sockets, board, reloads)
        children[pid] = index
        if in_force.generation != asked:  # a reload asked while it was forked: it missed it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)  # (blocked until it can reload, in app.run)
        if stopping:  # SIGTERM came while it was being forked: it missed it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    log.info(logfmt("stopped", workers=workers))
    handler.flush()
    return status


def _use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def no_core_dumps() -> None:
    """A core dump is the process's memory on disk: the mail being received (a keyed user's
    too, before it is encrypted: docs/encryption.md), the scratch files' keys, the login
    cache's key. Off for this process and every one it starts (the hard limit too, so that
    none turns it on again), whatever limit it inherited."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def serve(settings: Settings, *, source: str) -> int:
    """Run the server until SIGTERM/SIGINT; the exit code follows sysexits.h."""
    no_core_dumps()
    # SIGHUP's default action ends a process: until a reload can be done (the supervisor's
    # forwarding, a worker's or the one process's handler in app.run) it stays pending.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    handler = configure_logging(settings.server.log_format, settings.server.log_level)
    fast = _use_uvloop()
    log.info(logfmt("starting", version=_version(), source=source, uvloop=fast, pid=os.getpid()))
    workers = settings.server.workers or usable_cpus()
    try:
        mixed = root_in_users_data_dir(settings.server.user, Path(settings.server.data_dir))
        if mixed is not None:
            raise StartupError(mixed, EX_CONFIG)
        with locked(
            Path(settings.server.data_dir), server_owner(settings), settings.data_dir_origin
        ):
            check_store(settings)  # [store] postgresql: reachable, at our schema version
            if workers > 1:
                return supervise(settings, source, workers, handler)
            asyncio.run(run(settings, source))
    except (StartupError, DataDirError) as exc:
        log.error(logfmt("startup-failed", detail=str(exc)))
        handler.flush()
        print(f"hato: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EX_OK
    log.info(logfmt("stopped"))
    handler.flush()
    return EX_OK


def _version() -> str:
    from hato import __version__

    return __version__
