"""What the sessions of one listener share: settings and rooms (built once by the composition
root), and the connection accounting that enforces the per-listener and per-IP limits."""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from hato.authcheck import ArcSealer
from hato.intake.context import IntakeContext
from hato.intake.inbound import InboundChecker
from hato.intake.miltercheck import MilterFilter
from hato.intake.signing import OutboundSigner
from hato.intake.spamcheck import SpamFilter
from hato.model import Address, Role, logvalue
from hato.model.dns import Resolver
from hato.policy import (
    AuthThrottle,
    ListenerNetworkRules,
    NetworkTable,
    client_key,
)
from hato.server.auth import Accounts, ScramDecoy, VerifySlots
from hato.server.metrics import Metrics, RoleMetrics
from hato.server.screen import Screen
from hato.server.tls import ReloadingContext
from hato.smtp import ServerSettings


class SharedCounts(Protocol):
    """The counts of every worker (hato.policy.connections.ConnectionLedger)."""

    def claim(self, listener: str, client: str, max_total: int, max_per_client: int) -> bool: ...

    def add(self, listener: str, client: str) -> None: ...

    def drop(self, listener: str, client: str) -> None: ...


class LiveCount(Protocol):
    """This worker's live connections on the board every worker reads (server/spread.py)."""

    def add(self, step: int) -> None: ...


class OpenSession(Protocol):
    """What the listener's accounting knows of a session (server/session.py's SmtpSession):
    a graceful stop drains it, then aborts its transport."""

    transport: asyncio.Transport | None

    def drain(self) -> None: ...


@dataclass(slots=True)
class ListenerState:
    """Connection accounting for one listener (limits per listener and per client IP, an IPv6
    client by its /64), from the moment a connection is accepted. With `[server] workers` the
    limits hold across the workers: `shared` counts every worker's connections, and `admit`
    takes the place there at once (issue 15: per worker, one client had the limit once in
    each worker)."""

    name: str
    max_connections: int
    max_per_ip: int
    shared: SharedCounts | None = None
    load: LiveCount | None = None  # with workers: what spreads connections over them
    active: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    sessions: set[OpenSession] = field(default_factory=set)
    empty: asyncio.Event = field(default_factory=asyncio.Event)  # set while no session is open
    claimed: dict[str, int] = field(default_factory=dict)  # admitted in `shared`, not yet entered
    log_name: str = field(init=False, default="")  # `name` as a log line's value, made once

    def __post_init__(self) -> None:
        self.empty.set()
        self.log_name = logvalue(self.name)

    def admit(self, ip: str) -> bool:
        """Whether a connection of `ip` may open; with `shared`, its place is taken there
        (`reserve` or `enter` must follow at once, as they do)."""
        key = _ip_key(ip)
        if self.active >= self.max_connections or self.per_ip.get(key, 0) >= self.max_per_ip:
            return False
        if self.shared is None:
            return True
        if not self.shared.claim(self.name, key, self.max_connections, self.max_per_ip):
            return False
        self.claimed[key] = self.claimed.get(key, 0) + 1
        return True

    def reserve(self, ip: str) -> None:
        """Hold a place for a connection not yet a session (a TLS handshake on port 465)."""
        self.active += 1
        if self.load is not None:
            self.load.add(1)
        key = _ip_key(ip)
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        if self.shared is None:
            return
        waiting = self.claimed.get(key, 0)
        if waiting > 1:
            self.claimed[key] = waiting - 1
        elif waiting:
            del self.claimed[key]
        else:
            self.shared.add(self.name, key)  # a session of port 465, admitted at accept

    def release(self, ip: str) -> None:
        """Give back a place held by `reserve`."""
        self.active -= 1
        if self.load is not None:
            self.load.add(-1)
        self._uncount(ip)

    def enter(self, session: OpenSession, ip: str) -> None:
        self.reserve(ip)
        self.sessions.add(session)
        self.empty.clear()

    def leave(self, session: OpenSession, ip: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.active -= 1
        if self.load is not None:
            self.load.add(-1)
        if not self.sessions:
            self.empty.set()
        self._uncount(ip)

    def _uncount(self, ip: str) -> None:
        key = _ip_key(ip)
        left = self.per_ip.get(key, 1) - 1
        if left <= 0:
            self.per_ip.pop(key, None)
        else:
            self.per_ip[key] = left
        if self.shared is not None:
            self.shared.drop(self.name, key)


@functools.lru_cache(maxsize=4096)
def _ip_key(ip: str) -> str:
    """What the per-IP limit counts: an IPv6 client by its /64, as the AUTH throttle does (a
    host picks addresses from its /64 at will, RFC 4291 §2.5.4). Cached: a connection asks it
    three times (admit, enter, leave), and parsing the address each time was ~10 % of the
    Python of a connection (issue 15)."""
    try:
        return client_key(ip)
    except ValueError:
        return ip  # no IP address (a test's transport): counted as it is


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def session_ids(started: float, worker: int = 0) -> Iterator[str]:
    """Session ids for the log, unique per server and worker: the process's start second
    (base 36), the worker's index and a counter (`mzq3kd.0.1f`). The object's address, used
    before, repeated from one connection to a later one."""
    n, stamp = int(started), ""
    while True:
        n, digit = divmod(n, 36)
        stamp = _DIGITS[digit] + stamp
        if not n:
            break
    return (f"{stamp}.{worker}.{count:x}" for count in itertools.count(1))


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """What the configuration decides for one listener's sessions, as one value: built at start
    and by every reload (boot/build.py `listener_config`) and put in place whole by
    `SessionContext.configure`. Each field is the `SessionContext` field of the same name and
    type (tests/unit/server/test_listener_config.py holds them to it)."""

    settings: ServerSettings
    idle_timeout: float
    session_timeout: float
    tls_handshake_timeout: float
    hop_limit: int
    max_header_fields: int
    postmaster_domain: str
    network_rules: ListenerNetworkRules
    networks: NetworkTable
    send_as: dict[Address, frozenset[Address]]
    inbound: InboundChecker | None
    authserv_id: str
    signer: OutboundSigner | None
    sealers: dict[str, ArcSealer]
    spam: SpamFilter | None
    screen: Screen | None
    milters: tuple[MilterFilter, ...]


@dataclass(slots=True, kw_only=True)
class SessionContext(IntakeContext):
    """Everything a session of one listener needs: the pipeline's rooms (IntakeContext), and
    what only a network session has."""

    idle_timeout: float
    session_timeout: float
    listener: ListenerState
    tls: ReloadingContext | None = None  # STARTTLS (or implicit TLS) when set
    implicit_tls: bool = False  # RFC 8314 §3.3: the listener's sockets are TLS from the start
    accounts: Accounts | None = None  # AUTH, on submission roles
    verify_slots: VerifySlots = field(default_factory=lambda: VerifySlots(2))
    # SCRAM's salt and count for names that are not accounts (from DATA_DIR/secret).
    scram: ScramDecoy = field(default_factory=lambda: ScramDecoy(secrets.token_bytes(32)))
    tls_handshake_timeout: float = 30.0
    throttle: AuthThrottle | None = None  # AUTH failure delays and client blocks (not on mx)
    network_rules: ListenerNetworkRules = field(default_factory=ListenerNetworkRules)
    networks: NetworkTable = field(default_factory=lambda: NetworkTable.of(()))
    dns: Resolver | None = None  # for DNSBL-backed network rules
    metrics: RoleMetrics = field(default_factory=lambda: Metrics().role(Role.MX))
    screen: Screen | None = None  # the mx [screen]: DNSBL scores, early talkers, greylisting
    ids: Iterator[str] = field(default_factory=lambda: session_ids(0.0))  # shared by listeners
    # The worker's event loop, where the sessions run (None: asked of asyncio at each connect).
    # Given by the composition root: in CPython 3.11 every `get_running_loop()` is a getpid(2)
    # (its fork check), one a connection (issue 15).
    loop: asyncio.AbstractEventLoop | None = None

    def configure(self, config: ListenerConfig) -> None:
        """Put a listener's configuration in place, every field of it (typed: no field is set
        by name). New sessions see it; a session already open reads it as it goes on, as the
        values are swapped whole, never changed in place."""
        self.settings = config.settings
        self.idle_timeout = config.idle_timeout
        self.session_timeout = config.session_timeout
        self.tls_handshake_timeout = config.tls_handshake_timeout
        self.hop_limit = config.hop_limit
        self.max_header_fields = config.max_header_fields
        self.postmaster_domain = config.postmaster_domain
        self.network_rules = config.network_rules
        self.networks = config.networks
        self.send_as = config.send_as
        self.inbound = config.inbound
        self.authserv_id = config.authserv_id
        self.signer = config.signer
        self.sealers = config.sealers
        self.spam = config.spam
        self.screen = config.screen
        self.milters = config.milters
