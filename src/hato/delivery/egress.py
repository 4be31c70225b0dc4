"""Run-time detection of outbound port 25 blocking (OP25B) from the courier's own connections.

Theory of operation: every MX connection (never a relay, LMTP host or smarthost the admin
configured) tells the monitor whether TCP connect worked. One MX host that refuses or times out
is that host's problem; `BLOCKED_AFTER_HOSTS` different MX hosts failing at connect with no MX
connection succeeding in between (their names came from DNS, so DNS works) means this network
blocks port 25. That is logged once (`egress-blocked`), shown by `hato status` and `hato queue
show`, and, with a `[smarthost] fallback = true`, mail for MX routes goes through the smarthost
(the courier retries the recipients there in the same attempt). While blocked, one MX attempt per
`RECHECK_SECONDS` still goes out as a probe; the first MX connection that works clears the state
(`egress-unblocked`). The state lives in memory: a restart starts unblocked and learns again.

Must not import anything of hato but model and delivery.
"""

from __future__ import annotations

import datetime
import logging

from hato.model import Clock, logfmt

log = logging.getLogger("hato.delivery.egress")

BLOCKED_AFTER_HOSTS = 5  # different MX hosts failing at TCP connect, none succeeding
RECHECK_SECONDS = 3600.0  # while blocked, let one MX attempt through this often
SMARTHOST_HINT = (
    '[smarthost] host = "smtp.your-provider.example", port = 587, tls = "starttls", '
    "username and password_file, fallback = true (hato doctor prints the section)"
)


class EgressMonitor:
    def __init__(self, clock: Clock, threshold: int = BLOCKED_AFTER_HOSTS) -> None:
        self._clock = clock
        self._threshold = threshold
        self._failed: set[str] = set()
        self.blocked_since: float | None = None
        self._last_probe = 0.0

    def connect_failed(self, host: str) -> None:
        """An MX host refused, or did not answer, a TCP connection to port 25."""
        self._failed.add(host.lower())
        if self.blocked_since is None and len(self._failed) >= self._threshold:
            self.blocked_since = self._clock.now()
            self._last_probe = self._clock.monotonic()
            log.warning(
                logfmt("egress-blocked", hosts=len(self._failed), hint=SMARTHOST_HINT)
            )  # fmt: skip

    def connected(self) -> None:
        """A TCP connection to an MX host worked: port 25 is open."""
        self._failed.clear()
        if self.blocked_since is not None:
            self.blocked_since = None
            log.warning(logfmt("egress-unblocked"))

    def blocked(self) -> bool:
        return self.blocked_since is not None

    def use_fallback(self) -> bool:
        """True while blocked, except once per RECHECK_SECONDS (that attempt probes MX)."""
        if self.blocked_since is None:
            return False
        now = self._clock.monotonic()
        if now - self._last_probe >= RECHECK_SECONDS:
            self._last_probe = now
            return False
        return True

    def problems(self, *, fallback: bool) -> list[str]:
        """The line for `hato status` / `hato queue show`, while blocked."""
        if self.blocked_since is None:
            return []
        since = datetime.datetime.fromtimestamp(self.blocked_since, datetime.UTC)
        text = f"port 25 appears blocked on this network since {since:%Y-%m-%d %H:%M:%S} UTC"
        if fallback:
            return [f"{text}; mail goes through the [smarthost] (fallback = true)"]
        return [f"{text}; configure a smarthost: {SMARTHOST_HINT}"]
