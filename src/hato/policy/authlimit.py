"""AUTH failure throttling: growing delays, then a temporary block of the client.

Theory: every failed AUTH is counted twice, for the client and for the account it tried, over
a sliding `failure_window`. The 535 reply waits `failure_delay * 2^(n-1)` seconds (capped at
`max_failure_delay`), n being the larger of the two counts, so guessing gets slow for one
attacker and for many attackers on one account alike. Only a client's *own* failures block it:
when they reach `max_failures` it gets 421 4.7.0 and is blocked for `block_time` (its new
submission connections and every further AUTH get 421 4.7.0 too). Failures against an account
never block anybody: otherwise 30 guesses at bob's password from elsewhere would make bob's
first typo block bob's own address. Neither is the account ever locked.

A client that has logged in as an account recently (`trust_time`) is that account's known
client: the account's count does not slow it down, only its own does, so the owner of an
account under attack keeps logging in at full speed from where they always do. A success
clears the client's count but not the account's (the owner's phone logging in every five
minutes must not wipe out the count of a slow distributed guesser). When an account's count
reaches `max_account_failures` the failure says so once (`account_alert`) for the log.

An IPv6 client is counted by its /64 (RFC 4291 §2.5.4: the usual subnet a host picks addresses
from at will); an IPv4-mapped address as the IPv4 address.

Memory is bounded: each table keeps at most `max_entries` keys (least recently used go first),
and each key at most as many timestamps as its threshold.

May import hato.model only. Time comes from the Clock (monotonic).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

from hato.model import Clock, Reply

# RFC 4954 §6: 535 5.7.8 "Authentication credentials invalid".
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# RFC 5321 §3.8: 421 and close; RFC 3463 X.7.0: other security or policy status.
AUTH_BLOCKED = Reply(421, "4.7.0", "Too many failed authentication attempts; try again later")


@dataclass(frozen=True, slots=True)
class AuthThrottleSettings:
    failure_delay: float = 1.0  # seconds before the first 535; doubles per failure
    max_failure_delay: float = 16.0
    max_failures: int = 10  # per client within failure_window, then block the client
    max_account_failures: int = 30  # per account, from any client: logged as an alert
    failure_window: float = 600.0
    block_time: float = 900.0
    trust_time: float = 30 * 86_400.0  # a client's login makes it the account's known client
    max_entries: int = 100_000  # per table: clients, accounts, blocks, known clients

    def __post_init__(self) -> None:
        if min(self.max_failures, self.max_account_failures, self.max_entries) < 1:
            raise ValueError("max_failures, max_account_failures, max_entries must be >= 1")
        if min(self.failure_delay, self.failure_window, self.block_time) < 0:
            raise ValueError("delays, window and block time must not be negative")


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """What to do about one failed AUTH: wait `delay`, answer `reply`, close if `blocked`.

    The fields are for the log line (`event=auth-failed client=... account=...`).
    """

    delay: float
    reply: Reply
    blocked: bool
    client: str  # the address as counted (an IPv6 /64)
    client_failures: int
    account_failures: int
    account_alert: bool = False  # the account's count just reached max_account_failures


@functools.lru_cache(maxsize=4096)
def client_key(ip: str) -> str:
    """The unit a client is counted by: the IPv4 address, or the IPv6 /64. Cached: a
    submission session asks it at connect (`blocked`), and parsing the address was several
    µs (issue 15); a text that is no address raises ValueError every time (not cached)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Counter:
    """Failure timestamps per key, in a sliding window, LRU-bounded."""

    def __init__(self, threshold: int, max_entries: int) -> None:
        self._threshold = threshold
        self._max_entries = max_entries
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str, since: float) -> int:
        times = self._times.get(key)
        if times is None:
            return 0
        while times and times[0] <= since:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        return len(times)

    def add(self, key: str, now: float) -> None:
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque(maxlen=self._threshold)
            if len(self._times) > self._max_entries:
                self._times.popitem(last=False)
        self._times.move_to_end(key)
        times.append(now)

    def forget(self, key: str) -> None:
        self._times.pop(key, None)

    def __len__(self) -> int:
        return len(self._times)


class AuthThrottle:
    """The state of failed AUTH attempts; one per server process, shared by all sessions.

    On a failed AUTH: ``f = throttle.record_failure(ip, account)``, wait ``f.delay``, answer
    ``f.reply``, close the connection if ``f.blocked``. On connect: if ``blocked(ip)``, answer
    AUTH_BLOCKED and close. On a successful AUTH: ``record_success(ip, account)``.
    """

    def __init__(self, clock: Clock, settings: AuthThrottleSettings | None = None) -> None:
        self._clock = clock
        self.settings = s = settings or AuthThrottleSettings()
        self._clients = _Counter(s.max_failures, s.max_entries)
        self._accounts = _Counter(s.max_account_failures, s.max_entries)
        self._blocks: OrderedDict[str, float] = OrderedDict()
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> trusted until

    def close(self) -> None:
        """Nothing to close in memory (a shared throttle closes its file)."""

    def _now(self) -> float:
        """The time this throttle counts in: monotonic, as nothing outlives the process."""
        return self._clock.monotonic()

    def delay_for(self, ip: str, account: str | None) -> float:
        """Seconds to wait before the 535 for the failures recorded so far (0 for none)."""
        client, acct = client_key(ip), _account_key(account)
        client_n, account_n = self._counts(client, acct)
        n = client_n if self._is_known(client, acct) else max(client_n, account_n)
        if n == 0:
            return 0.0
        s = self.settings
        return float(min(s.max_failure_delay, s.failure_delay * 2 ** min(n - 1, 32)))

    def record_failure(self, ip: str, account: str | None) -> AuthFailure:
        now = self._now()
        client, acct = client_key(ip), _account_key(account)
        before = self._counts(client, acct)[1]
        self._add(client, acct, now)
        client_n, account_n = self._counts(client, acct)
        s = self.settings
        # Only the client's own failures block it; the account's only slow it down.
        blocked = client_n >= s.max_failures
        if blocked:
            self._block(client, now + s.block_time)
        reply = AUTH_BLOCKED if blocked else AUTH_FAILED
        alert = before < s.max_account_failures <= account_n
        return AuthFailure(
            self.delay_for(ip, account), reply, blocked, client, client_n, account_n, alert
        )

    def record_success(self, ip: str, account: str | None) -> None:
        client = client_key(ip)
        self._forget(client)
        if acct := _account_key(account):
            key = (client, acct)
            self._known[key] = self._now() + self.settings.trust_time
            self._known.move_to_end(key)
            if len(self._known) > self.settings.max_entries:
                self._known.popitem(last=False)

    def blocked(self, ip: str) -> bool:
        key = client_key(ip)
        until = self._blocks.get(key)
        if until is None:
            return False
        if until <= self._now():
            del self._blocks[key]
            return False
        return True

    def unblock(self, ip: str) -> bool:
        """An admin lifts a block early; whether there was one."""
        self._forget(client_key(ip))
        return self._blocks.pop(client_key(ip), None) is not None

    def blocks(self) -> list[tuple[str, float]]:
        """The blocked clients as counted (IPv4 address, IPv6 /64) and when each block ends
        (wall clock, seconds since the epoch), for `hato user blocked`."""
        now, wall = self._now(), self._clock.now()
        return sorted((c, wall + until - now) for c, until in self._blocks.items() if until > now)

    def _add(self, client: str, account: str, now: float) -> None:
        """Count one failure of `client` (and of `account`, when given) at `now`."""
        self._clients.add(client, now)
        if account:
            self._accounts.add(account, now)

    def _forget(self, client: str) -> None:
        self._clients.forget(client)

    def sizes(self) -> tuple[int, int, int]:
        """Entries in the client, account and block tables (for metrics and tests)."""
        return len(self._clients), len(self._accounts), len(self._blocks)

    def known_clients(self) -> int:
        """Entries in the table of accounts' known clients (for tests)."""
        return len(self._known)

    def _is_known(self, client: str, account: str) -> bool:
        until = self._known.get((client, account)) if account else None
        if until is None:
            return False
        if until <= self._now():
            del self._known[(client, account)]
            return False
        return True

    def _counts(self, client: str, account: str) -> tuple[int, int]:
        since = self._now() - self.settings.failure_window
        account_n = self._accounts.count(account, since) if account else 0
        return self._clients.count(client, since), account_n

    def _block(self, client: str, until: float) -> None:
        self._blocks[client] = until
        self._blocks.move_to_end(client)
        if len(self._blocks) > self.settings.max_entries:
            self._blocks.popitem(last=False)


def _account_key(account: str | None) -> str:
    return account.strip().casefold() if account else ""
