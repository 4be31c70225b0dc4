"""The control socket: how `hato queue`, `hato status` and `hato-sendmail` talk to the server.

Theory of operation. A unix socket, DATA_DIR/control.sock, mode 0600 (its owner, root or the
hato user, may use it; the file system is the access check), speaks JSON lines: one request
object per line, one response object per line, as many as the client likes on a connection.
Every request names an `op`:

    {"op": "hello"}                          -> {"ok": true, "hostname": ..., "domain": ...}
    {"op": "status"}                         -> queue figures, last-hour outcomes, uptime
    {"op": "reload"}                         -> {"ok": true, "reload": {"applied": ..., ...}}
    {"op": "tls.renew"}                      -> {"ok": true, "certificate": {"serial": ...}}
    {"op": "reports.send", "now": true}      -> {"ok": true, "reports": {"sent": [...], ...}}
    {"op": "queue.list", "domain": ...}      -> {"ok": true, "rows": [...]}
    {"op": "queue.show", "id": ...}          -> {"ok": true, "message": {...}}
    {"op": "queue.hold" | "queue.release" | "queue.flush" | "queue.delete" | "queue.bounce",
     "id" | "domain" | "sender": ..., "all": true}   -> {"ok": true, "result": {...}}
    {"op": "submit", "from": "a@b" | "", "rcpt": [...], "size": N} + N octets of message
                                             -> {"ok": true, "id": queue id}
    {"op": "user.held"}                      -> {"ok": true, "held": [[user, until], ...]}
    {"op": "user.release", "user": ...}      -> {"ok": true, "released": bool}
    {"op": "auth.blocks"}                    -> {"ok": true, "blocks": [[client, until], ...]}
    {"op": "auth.unblock", "client": ...}    -> {"ok": true, "unblocked": key | null}
    {"op": "admin.log", "line": "event=admin-...", "uid": N}   -> {"ok": true}

(`until`: seconds since the epoch, or null for a hold that only an admin ends; the user and
auth ops are policy/admin.py's, which logs each lifting in the server's log. `admin.log`: a
command that changed something itself, `hato user add` say, logs it here (hato.cli.audit).
Every admin-* line gets the uid of the command: the peer's, or the one it was started with.)

A failure is {"ok": false, "error": text} (for submit also "reply", "temporary", "refused").
A mutating op with no selector needs "all": true (like `postsuper -d ALL`), except flush.

An optional second socket (`submit_path`, mode 0666: any local user) answers only `hello` and
`submit`; the peer's uid (SO_PEERCRED) goes into the Received header, like Postfix's pickup, and
decides which senders it may use and its sending limits (server.localsubmit). It takes at most
MAX_PUBLIC_CONNECTIONS connections, MAX_CONNECTIONS_PER_UID of one uid, and reads at most
MAX_BODIES_AT_ONCE messages at a time, MAX_BODIES_PER_UID of one uid (another is refused for
now), each streamed into the queue's body as it comes. The control socket's submissions (root
and the server's user: cron's mail) have slots of their own: local users sending slowly held
all 8 for BODY_TIMEOUT, and root's hato-sendmail gave up (exit 75) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from hato.model import (
    Clock,
    ReversePath,
    logfmt,
)
from hato.policy.admin import NotAClient, PolicyAdmin
from hato.queue import Committer, QueueError, QueueStore
from hato.queue.admin import Action, LiveAdmin, Selector, as_json
from hato.server import adminlog
from hato.server.localsubmit import LocalBody, SubmitRefused, reverse_path

log = logging.getLogger("hato.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST_LINE = 64 * 1024
IDLE_TIMEOUT = 60.0  # seconds a client may wait between requests
BODY_TIMEOUT = 300.0  # seconds to send the octets of one submitted message
# The submission socket is open to every local user: bounded so that none of them can take
# the server's memory or connections (each message is held whole while it is checked).
MAX_PUBLIC_CONNECTIONS = 32
MAX_CONNECTIONS_PER_UID = 4
MAX_BODIES_AT_ONCE = 8  # on each socket
MAX_BODIES_PER_UID = 2  # of one uid on the submission socket, at once
# RFC 3463 §3.4 X.3.2 system not accepting messages: try again later.
BUSY = "451 4.3.2 too many messages at once from this user; try again later"
_CHUNK = 64 * 1024  # a submitted message is read and written on in pieces of this size
_ACTIONS = {f"queue.{a.value}": a for a in Action}
_PUBLIC_OPS = frozenset({"hello", "submit"})


class Waker(Protocol):
    def wake(self) -> None: ...


class Submit(Protocol):
    """Queue a locally submitted message; returns its queue id. Raises SubmitRefused."""

    def new_body(self, recipients: Sequence[str] = ()) -> LocalBody: ...

    async def __call__(
        self,
        mail_from: ReversePath,
        recipients: list[str],
        message: bytes | LocalBody,
        *,
        uid: int | None,
    ) -> str: ...


class LastHour(Protocol):
    """The recipient outcomes of the last hour, for `hato status` (server/deliverycount.py
    OutcomeCounter, or the sum of every worker's: server/workerfigures.py)."""

    def counts(self) -> dict[str, int]: ...


class RequestError(Exception):
    """A request we cannot carry out; the text goes back to the client."""


class ControlServer:
    def __init__(
        self,
        *,
        queue: QueueStore,
        runner: Waker,
        submit: Submit | None,
        clock: Clock,
        hostname: str,
        domain: str,
        max_message_size: int = 50 * 1024 * 1024,
        counter: LastHour | None = None,
        info: Callable[[], Mapping[str, Any]] | None = None,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        renew: Callable[[], Awaitable[dict[str, str]]] | None = None,
        committer: Committer | None = None,
        reports: Callable[[bool], Awaitable[dict[str, list[str]]]] | None = None,
        policy: PolicyAdmin | None = None,
    ) -> None:
        # `committer`: the runner's, so `hato queue bounce`'s DSNs are protected as its are.
        self._admin = LiveAdmin(
            queue, clock.now, adminlog.admin_log, hostname=hostname, committer=committer
        )
        self._runner = runner
        self._submit = submit
        self._clock = clock
        self._hostname = hostname
        self._domain = domain
        self._max_message_size = max_message_size
        self._info = info
        self._counter = counter
        self._reload = reload
        self._renew = renew  # [tls] acme: order a certificate now (boot/acme.py)
        self._reports = reports  # [reports]: send the reports now (boot/reportwatch.py)
        self._policy = policy or PolicyAdmin(None, None, adminlog.admin_log)
        self._started = clock.now()
        self._public: dict[int | None, int] = {}  # open submission-socket connections per uid
        self._bodies = asyncio.Semaphore(MAX_BODIES_AT_ONCE)  # the submission socket's
        self._own_bodies = asyncio.Semaphore(MAX_BODIES_AT_ONCE)  # the control socket's
        self._bodies_of: dict[int | None, int] = {}  # submission-socket bodies per uid

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, public: bool
    ) -> None:
        uid = _peer_uid(writer)
        adminlog.PEER_UID.set(uid)  # this connection's task only (adminlog.admin_log)
        if public and not self._admit(uid):
            log.warning(logfmt("control-busy", uid=uid))
            writer.write(b'{"ok":false,"error":"too many connections; try again later"}\n')
            writer.close()
            return
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    line = await reader.readline()
                if not line:
                    return
                response = await self._respond(line, reader, public=public, uid=uid)
                writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            # ValueError: a request line over MAX_REQUEST_LINE (asyncio's LimitOverrunError).
            log.info(logfmt("control-dropped", error=type(exc).__name__, uid=uid))
        finally:
            if public:
                self._public[uid] -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _admit(self, uid: int | None) -> bool:
        if sum(self._public.values()) >= MAX_PUBLIC_CONNECTIONS:
            return False
        if self._public.get(uid, 0) >= MAX_CONNECTIONS_PER_UID:
            return False
        self._public[uid] = self._public.get(uid, 0) + 1
        return True

    async def _respond(
        self, line: bytes, reader: asyncio.StreamReader, *, public: bool, uid: int | None
    ) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise RequestError('a request is a JSON object with an "op"')
            op = request["op"]
            if public and op not in _PUBLIC_OPS:
                raise RequestError(f"{op}: not allowed on the submission socket")
            if op == "submit":
                return await self._on_submit(request, reader, uid, public=public)
            return {"ok": True, **await self._dispatch(op, request)}
        except (json.JSONDecodeError, RecursionError):
            # RecursionError: "[[[[..." (any local user may write to the submission socket);
            # it ended the connection with a traceback in the log.
            return {"ok": False, "error": "not a JSON line"}
        except RequestError as exc:
            return {"ok": False, "error": str(exc)}
        except ConnectionError:
            raise
        except QueueError as exc:
            # The store could not answer (disk, lock): the detail to the log and the client.
            log.error(logfmt("control-failed", op=line[:64], error=exc.detail))
            return {"ok": False, "error": exc.detail}
        except OSError as exc:
            log.error(logfmt("control-failed", op=line[:64], error=str(exc)))
            return {"ok": False, "error": f"queue store: {exc}"}

    async def _dispatch(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return {"hostname": self._hostname, "domain": self._domain, "pid": os.getpid()}
        if op == "status":
            return await self._status()
        if op in ("reload", "tls.renew", "reports.send"):
            return await self._on_server(op, request.get("now") is True)
        if op == "admin.log":
            try:
                adminlog.log_sent(request)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            return {}
        if op.startswith(("user.", "auth.")):
            return self._on_policy(op, request)
        selector = _selector(request)
        if op == "queue.list":
            return {"rows": [as_json(row) for row in await self._admin.list(selector)]}
        if op == "queue.show":
            if selector.queue_id is None:
                raise RequestError('queue.show needs an "id"')
            detail = await self._admin.show(selector.queue_id)
            if detail is None:
                raise RequestError(f"{selector.queue_id}: no such message in the queue")
            notes = list(self._info().get("egress", [])) if self._info is not None else []
            return {"message": as_json(detail), "notes": notes}
        action = _ACTIONS.get(op)
        if action is None:
            raise RequestError(f"{op}: unknown op")
        if selector == Selector() and action is not Action.FLUSH and request.get("all") is not True:
            raise RequestError(f'{op} of every message needs "all": true')
        result = await self._admin.apply(action, selector, adminlog.of_this_peer())
        if action in (Action.FLUSH, Action.RELEASE) and result.rows:
            self._runner.wake()
        return {"result": as_json(result)}

    async def _on_server(self, op: str, now: bool) -> dict[str, Any]:
        """`hato reload`, `hato tls renew`, `hato report send`: each logged with the peer's
        uid (`admin-reload|tls-renew|report-send`, adminlog.py), whatever came of it."""
        if op == "reload":  # boot.reload: waits for the outcome
            if self._reload is None:
                raise RequestError("reload: not available in this server")
            outcome = await self._reload()
            changed = ",".join(outcome.get("changed", [])) or None
            applied = bool(outcome.get("applied"))
            adminlog.admin_log(logfmt("admin-reload", applied=applied, changed=changed))
            return {"reload": outcome}
        if op == "tls.renew":
            if self._renew is None:
                raise RequestError("tls renew: no [tls] acme configured")
            certificate = await self._renew()
            facts = {k: certificate.get(k) for k in ("serial", "not_after", "error")}
            adminlog.admin_log(logfmt("admin-tls-renew", **facts))  # None: left out
            if "error" in certificate:
                raise RequestError(f"tls renew: the order failed: {certificate['error']}")
            return {"certificate": certificate}
        if self._reports is None:
            raise RequestError("report send: [reports] is not enabled (docs/reports.md)")
        reports = await self._reports(now)
        counts = {"sent": len(reports["sent"]), "skipped": len(reports["skipped"])}
        adminlog.admin_log(logfmt("admin-report-send", now=now, **counts))
        return {"reports": reports}

    def _on_policy(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """`hato user held|release|blocked|unblock` (policy/admin.py)."""
        policy = self._policy
        if op == "user.held":
            return {"held": [[u, _finite(until)] for u, until in policy.holds()]}
        if op == "auth.blocks":
            return {"blocks": [list(block) for block in policy.blocks()]}
        if op == "user.release":
            user = request.get("user")
            if not isinstance(user, str):
                raise RequestError('user.release needs a "user"')
            return {"released": policy.release(user)}
        if op == "auth.unblock":
            client = request.get("client")
            if not isinstance(client, str):
                raise RequestError('auth.unblock needs a "client"')
            try:
                return {"unblocked": policy.unblock(client)}
            except NotAClient as exc:
                raise RequestError(str(exc)) from None
        raise RequestError(f"{op}: unknown op")

    async def _status(self) -> dict[str, Any]:
        stats = as_json(await self._admin.stats())
        now = self._clock.now()
        out: dict[str, Any] = {"pid": os.getpid(), "uptime": now - self._started, "queue": stats}
        if self._counter is not None:
            out["last_hour"] = self._counter.counts()
        if self._info is not None:
            out.update(self._info())
        return out

    async def _on_submit(
        self,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        uid: int | None,
        *,
        public: bool,
    ) -> dict[str, Any]:
        size = request.get("size")
        if not isinstance(size, int) or size < 0:
            raise RequestError('submit needs "size": the octets that follow the line')
        if size > self._max_message_size:
            # The octets are not read: the connection cannot be used again.
            raise ConnectionResetError("message too big")
        sender, rcpts = request.get("from", ""), request.get("rcpt")
        problem = ""
        if not isinstance(sender, str) or not isinstance(rcpts, list) or not rcpts:
            problem = 'submit needs "from" (a string) and "rcpt" (a list)'
        elif not all(isinstance(r, str) for r in rcpts):
            problem = '"rcpt" is a list of addresses'
        if self._submit is None:
            problem = "local submission is not enabled on this server"
        if problem or self._submit is None:
            await _skip(reader, size)  # so that the connection can go on
            raise RequestError(problem)
        assert isinstance(sender, str) and isinstance(rcpts, list)
        if public and self._bodies_of.get(uid, 0) >= MAX_BODIES_PER_UID:
            log.warning(logfmt("control-busy", uid=uid, reason="bodies"))
            await _skip(reader, size)  # so that the connection can go on
            return {"ok": False, "error": BUSY, "reply": BUSY, "temporary": True}
        if public:
            self._bodies_of[uid] = self._bodies_of.get(uid, 0) + 1
        try:
            return await self._receive(sender, rcpts, size, reader, uid, public=public)
        finally:
            if public:
                self._bodies_of[uid] -= 1

    async def _receive(
        self,
        sender: str,
        rcpts: list[str],
        size: int,
        reader: asyncio.StreamReader,
        uid: int | None,
        *,
        public: bool,
    ) -> dict[str, Any]:
        assert self._submit is not None
        slots = self._bodies if public else self._own_bodies
        body = self._submit.new_body(rcpts)  # a keyed recipient: sealed scratch, not the spool
        try:
            # Streamed into the queue's body file: never a whole message in memory.
            async with slots, asyncio.timeout(BODY_TIMEOUT):
                left = size
                while left:
                    chunk = await reader.read(min(left, _CHUNK))
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", left)
                    body.feed(chunk)
                    left -= len(chunk)
            body.finish()
            mail_from = reverse_path(sender, self._domain)
            queue_id = await self._submit(mail_from, rcpts, body, uid=uid)
        except SubmitRefused as exc:
            body.discard()
            return {
                "ok": False,
                "error": str(exc.reply),
                "reply": str(exc.reply),
                "temporary": exc.reply.is_transient,
                "refused": {k: str(v) for k, v in exc.refused.items()},
            }
        except BaseException:
            body.discard()
            raise
        return {"ok": True, "id": queue_id}


def _finite(until: float) -> float | None:
    """JSON has no infinity: a hold that only an admin ends (hold_time 0) is null."""
    return None if until == float("inf") else until


async def _skip(reader: asyncio.StreamReader, size: int) -> None:
    """Read and drop `size` octets, so that the connection can go on."""
    async with asyncio.timeout(BODY_TIMEOUT):
        while size:
            chunk = await reader.read(min(size, _CHUNK))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(chunk)


def _selector(request: dict[str, Any]) -> Selector:
    try:
        return Selector.from_dict(request)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def bind_unix(path: Path, mode: int, owner: tuple[int, int] | None = None) -> socket.socket:
    """A listening unix socket at `path` with `mode` (and `owner`), never reachable with wider
    rights: bound under a temporary name, chmod-ed, then renamed into place (replacing a stale
    socket). The temporary name is changed through a descriptor of what is there, a socket:
    root binds DATA_DIR/control.sock in a directory the server's user owns, whose processes
    could put a link to /etc/shadow in its place between the bind and the chmod."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        if mode & 0o007:
            # A socket for every user needs a directory every user can pass through (the
            # server's umask is 077).
            os.chmod(path.parent, 0o755)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        _set_mode(tmp, mode, owner)
        os.replace(tmp, path)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return sock


def _set_mode(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    """chmod (and chown) the socket at `path`, never what a link there points to."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.EEXIST, "replaced by something else than the socket", str(path))
        where = f"/proc/self/fd/{fd}"  # the inode opened (Linux), not a name to resolve again
        os.chmod(where, mode)
        if owner is not None:
            os.chown(where, *owner)
    finally:
        os.close(fd)


def bind_sockets(
    path: Path, submit_path: Path | None, owner: tuple[int, int] | None = None
) -> tuple[socket.socket, socket.socket | None]:
    """The control socket (given to `owner`, the server's user) and the submission socket,
    bound before the privilege drop: the submission socket's directory (/run/hato) may be
    root's. Raises OSError."""
    control = bind_unix(path, 0o600, owner)
    try:
        public = bind_unix(submit_path, 0o666) if submit_path is not None else None
    except OSError:
        control.close()
        raise
    return control, public


async def serve(
    path: Path,
    server: ControlServer,
    *,
    submit_path: Path | None = None,
    ready: Callable[[], None] | None = None,
    bound: tuple[socket.socket, socket.socket | None] | None = None,
) -> None:
    """Serve the control socket (and the submission socket) until cancelled; `bound`: the
    sockets bind_sockets made, else they are bound here."""
    servers = []
    try:
        control, public = bound or bind_sockets(path, submit_path)
        servers.append(
            await asyncio.start_unix_server(
                lambda r, w: server.handle(r, w, public=False),
                sock=control,
                limit=MAX_REQUEST_LINE,
            )
        )
        if public is not None:
            servers.append(
                await asyncio.start_unix_server(
                    lambda r, w: server.handle(r, w, public=True),
                    sock=public,
                    limit=MAX_REQUEST_LINE,
                )
            )
        log.info(logfmt("control-listening", path=path, submit=submit_path))
        if ready is not None:
            ready()
        await asyncio.Event().wait()
    finally:
        for srv in servers:
            srv.close()
        for p in (path, submit_path):
            if p is not None:
                # PermissionError: bound by root in root's directory before the privilege drop;
                # the next start replaces it.
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    p.unlink()
