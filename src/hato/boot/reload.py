"""Typed reload (SIGHUP, `hato reload`): every changed key applied, or none.

Theory of operation. Every key of hato.toml is of one of two kinds: a *live* key, which a
reload applies to new sessions and the next delivery attempts (listed in LIVE_KEYS, each with
the piece of the running server that takes it), or a key that needs a restart (everything
else: listeners, the data directory, the user, queue, DNS and metrics settings, ...). A reload
reads the file, names every key whose value differs from the configuration in force, and then
either applies them all, when all are live, or applies none and says which keys need a restart
(`event=reload-refused keys=...`). A file with errors is refused whole the same way. So the
log never says `reloaded` while some of what was changed is not in force: issue 13's case of a
new [[transport]] that was "reloaded" while mail to its domain still bounced cannot recur.

Certificates are files, not keys: their contents are read again on every reload, whatever the
outcome (a renewal must not wait for an unrelated configuration fix).

Who asks: SIGHUP (systemd's ExecReload, `kill -HUP`), or `hato reload` through the control
socket, which waits for the outcome and prints it. With workers, the control socket's worker
asks the supervisor (its parent) with SIGHUP, which passes it to every worker, and answers with
its own outcome once it has reloaded (all workers read the same file).

May import every room (part of the composition root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hato.boot.build import build_resolver, door_config, listener_config, send_limit_settings
from hato.boot.outbound import outbound_settings, verify_contexts
from hato.boot.shared import Shared
from hato.boot.tlswatch import reload_tls
from hato.boot.web import publications
from hato.delivery.outbound import OutboundCourier
from hato.directory.aliases import AliasTable
from hato.model import logfmt
from hato.server.context import SessionContext

if TYPE_CHECKING:
    from hato.config import Settings
    from hato.config.sections import ListenerSettings

log = logging.getLogger("hato")

_OUTBOUND = frozenset({"transport", "smarthost", "delivery"})
REPLY_TIMEOUT = 30.0  # seconds `hato reload` waits for a worker's outcome

# The TOML names of the Settings fields that hold arrays of tables.
_TOML_NAMES = {
    "listeners": "listener",
    "domains": "domain",
    "networks": "network",
    "transports": "transport",
    "milters": "milter",
}
_NOT_KEYS = frozenset({"data_dir_origin"})  # where data_dir came from, not a setting

# Keys a reload applies, and what takes them (boot.build listener_config, and
# LiveConfiguration._apply).
LIVE_KEYS = frozenset(
    {
        "domain",  # the recipient resolver, send_as grants, DKIM selectors (not the first name),
        # the MTA-STS policy the web endpoint serves
        "network",  # client networks and their DNSBLs, for new sessions
        "screen",  # every key: the mx screen of new sessions (boot/screen.py)
        "local.aliases_file",  # the resolver (the file is read again too)
        "local.recipient_delimiter",
        "local.postmaster",  # the resolver
        "authcheck",  # every key; the DKIM keys are read again too
        "rspamd",  # every key: the next message's check (boot.filters)
        "milter",  # every key: the next message's milters (boot.filters)
        "limits.max_recipients",
        "limits.max_bad_commands",
        "limits.max_refused_recipients",
        "limits.max_junk_commands",
        "limits.max_text_line",
        "limits.max_header_fields",  # the next message's header section (every door)
        "limits.idle_timeout",
        "limits.session_timeout",
        "limits.tls_handshake_timeout",  # the next handshake
        "limits.messages_per_hour",  # the send limiter
        "limits.recipients_per_hour",
        "limits.spike_recipients",
        "limits.spike_window",
        "limits.spike_hold",
        "limits.hold_time",
        "auth.mechanisms",
        "transport",  # the outbound courier's routes, for the next attempt
        "smarthost",  # (its password_file is read again)
        "delivery.mx_port",
        "delivery.allow_loopback",
        "delivery.source_address",
        "delivery.connect_timeout",
        "delivery.attempt_timeout",
        "delivery.ca_file",
    }
)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: `applied` the `changed` keys, or refused for `reasons`."""

    applied: bool
    source: str
    changed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # changed keys that need a restart
    errors: tuple[str, ...] = ()  # the configuration's own problems

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "source": self.source,
            "changed": list(self.changed),
            "restart": list(self.restart),
            "errors": list(self.errors),
        }


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The keys whose values differ: `section.key` for a table, the name for an array."""
    keys: list[str] = []
    for field in fields(old):
        if field.name in _NOT_KEYS:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        name = _TOML_NAMES.get(field.name, field.name)
        if isinstance(before, BaseModel) and type(before) is type(after):
            keys.extend(
                f"{name}.{key}"
                for key in type(before).model_fields
                if getattr(before, key) != getattr(after, key)
            )
        else:
            keys.append(name)
    if old.domains and new.domains and old.domains[0].name != new.domains[0].name:
        # The first domain qualifies bare local names (hato-sendmail) and postmaster's.
        keys.append("domain[0].name")
    return keys


def needs_restart(keys: list[str]) -> list[str]:
    """The keys that are not live (a whole live table: every key of it is live)."""
    return [key for key in keys if key not in LIVE_KEYS and key.split(".")[0] not in LIVE_KEYS]


def decide(old: Settings, new: Settings, source: str) -> ReloadOutcome:
    keys = changed_keys(old, new)
    restart = needs_restart(keys)
    return ReloadOutcome(not restart, source, tuple(keys), tuple(restart))


def log_outcome(outcome: ReloadOutcome) -> None:
    if outcome.applied:
        changed = ",".join(outcome.changed) or "nothing"
        log.info(logfmt("reloaded", source=outcome.source, changed=changed))
        return
    for line in outcome.errors:
        log.error(logfmt("reload-refused", source=outcome.source, detail=line))
    if outcome.restart:
        log.error(
            logfmt(
                "reload-refused",
                source=outcome.source,
                keys=",".join(outcome.restart),
                detail="these keys need a restart; nothing of the file was applied",
            )
        )


def read_again(current: Settings, path: Path, source: str) -> tuple[ReloadOutcome, Settings | None]:
    """The file read again and compared with `current`: the outcome, and the new settings
    when every changed key is live (None when the file is refused)."""
    from hato.config import ConfigError, load_settings

    try:
        # The files it names were read as root at start; what the reload reads again
        # (LiveConfiguration._apply) must be readable by us now, and a refusal names the one
        # that is not.
        new = load_settings(path, env=os.environ, cwd=Path.cwd(), check_access=False).settings
    except ConfigError as exc:
        return ReloadOutcome(False, source, errors=tuple(exc.lines())), None
    except OSError as exc:
        return ReloadOutcome(False, source, errors=(f"{path}: {exc}",)), None
    outcome = decide(current, new, source)
    return outcome, (new if outcome.applied else None)


def cannot_read(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc} (the server runs as uid {os.geteuid()})"


def read_files(new: Settings, changed: tuple[str, ...]) -> None:
    """Read what LiveConfiguration._apply reads besides hato.toml, and may fail on (OSError,
    ValueError): the aliases file, and for a changed outbound key the smarthost's password
    file and the CA files."""
    if new.local.aliases_file is not None:
        AliasTable.load(new.local.aliases_file)
    if any(key.split(".")[0] in _OUTBOUND for key in changed):
        outbound_settings(new)
        verify_contexts(new)


class InForce:
    """The supervisor's copy of its workers' configuration in force, from which it starts the
    worker that replaces a dead one (which ran the file of the last reload, not the one the
    supervisor started with). Each SIGHUP the supervisor passes on, it reads the file again
    as the workers do (`read_again`, `read_files`, as the data directory's owner: the workers'
    user) and keeps the new settings when they would apply them, the previous otherwise."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self.generation = 0  # reloads asked so far: a worker forked across one missed it

    def reload(self) -> None:
        """Their outcome is the workers' to log (event=reloaded or reload-refused)."""
        self.generation += 1
        path = Path(self.source)
        if not path.is_file():
            return  # the embedded default never changes
        outcome, new = read_again(self.settings, path, self.source)
        if new is None:
            return
        try:
            read_files(new, outcome.changed)
        except (OSError, ValueError):
            return  # the workers refuse it too, and keep the previous
        self.settings = new


class ReloadRequests:
    """How a worker asks the supervisor for a reload (`hato reload` on the control socket).

    Not by a signal: a worker that dropped root (`[server] user`) may not signal the
    supervisor, which stays root (kill(2): EPERM; `hato reload` failed with "Operation not
    permitted"). A pipe made before the fork instead: a worker writes one byte, and the kernel
    tells the supervisor with SIGIO (fcntl(2) O_ASYNC and F_SETOWN, set by the supervisor
    itself, so the signal is sent with its own rights), which it takes as a SIGHUP."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def arm(self) -> None:
        """In the supervisor, once it handles SIGIO: a byte written is a SIGIO to it."""
        import fcntl

        fcntl.fcntl(self.read_end, fcntl.F_SETOWN, os.getpid())
        flags = fcntl.fcntl(self.read_end, fcntl.F_GETFL)
        fcntl.fcntl(self.read_end, fcntl.F_SETFL, flags | os.O_ASYNC)

    def drain(self) -> bool:
        """In the supervisor: whether a request came (every byte read: one reload for all)."""
        came = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_end, 4096):
                came = True
        return came

    def ask(self) -> None:
        """In a worker."""
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a reload is pending
            os.write(self.write_end, b"r")


class Reloader:
    """Runs reloads and hands their outcomes to whoever asked (`hato reload`)."""

    def __init__(
        self, reload: Callable[[], ReloadOutcome], *, ask_parent: Callable[[], None] | None
    ) -> None:
        self._reload = reload
        # A worker: the supervisor reloads and signals every worker (ReloadRequests).
        self._ask_parent = ask_parent
        self._waiting: list[asyncio.Future[ReloadOutcome]] = []

    def on_signal(self) -> None:
        """SIGHUP: reload now, and answer every `hato reload` waiting for it."""
        outcome = self._reload()
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(outcome)

    async def request(self) -> dict[str, Any]:
        """The control socket's `reload` op."""
        if self._ask_parent is None:
            future: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            self.on_signal()
            return future.result().as_json()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._ask_parent()
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                return (await future).as_json()
        except TimeoutError:
            late = f"no outcome within {REPLY_TIMEOUT:.0f} s; see the log (event=reloaded)"
            return ReloadOutcome(False, "?", errors=(late,)).as_json()


class LiveConfiguration:
    """The configuration in force and the running pieces a reload reaches."""

    def __init__(
        self,
        settings: Settings,
        source: str,
        shared: Shared,
        outbound: OutboundCourier,
        listeners: list[tuple[SessionContext, ListenerSettings]],
    ) -> None:
        self.settings = settings
        self.source = source
        self._shared = shared
        self._outbound = outbound
        self._listeners = listeners

    def reload(self) -> ReloadOutcome:
        """Read the file again; apply every changed key, or none (the module docstring)."""
        reload_tls(self._shared.tls, force=True)
        path = Path(self.source)
        if not path.is_file():
            outcome = ReloadOutcome(True, self.source)  # the embedded default never changes
        else:
            outcome = self._read_and_apply(path)
        log_outcome(outcome)
        return outcome

    def _read_and_apply(self, path: Path) -> ReloadOutcome:
        outcome, new = read_again(self.settings, path, self.source)
        if new is None:
            return outcome
        try:
            self._apply(new, outcome.changed)
        except OSError as exc:  # an aliases, password or CA file it cannot read
            return ReloadOutcome(False, self.source, outcome.changed, errors=(cannot_read(exc),))
        except ValueError as exc:
            return ReloadOutcome(False, self.source, outcome.changed, errors=(str(exc),))
        return outcome

    def _apply(self, new: Settings, changed: tuple[str, ...]) -> None:
        """Build everything the new configuration needs first (this may fail, and then nothing
        changed), then put it in place (this cannot fail)."""
        shared = self._shared
        resolver = build_resolver(new, shared.users, shared.srs)
        outbound = None
        if any(key.split(".")[0] in _OUTBOUND for key in changed):
            # Only then: [smarthost] password_file and the CA files are read again.
            outbound = (outbound_settings(new), *verify_contexts(new))
        problems: list[str] = []
        configs = [
            (ctx, listener_config(new, shared, listener, problems))
            for ctx, listener in self._listeners
        ]
        doors = [(ctx, door_config(new, shared, door)) for ctx, door in shared.doors]
        shared.resolver.current = resolver
        if outbound is not None:
            self._outbound.reconfigure(*outbound)
        shared.limiter.settings = send_limit_settings(new)
        shared.published.current = publications(new)  # [[domain]] mta_sts_mode, max_age
        for ctx, config in configs:
            ctx.configure(config)
        for door, rooms in doors:
            door.configure_door(rooms)
        shared.problems[:] = problems
        self.settings = new
