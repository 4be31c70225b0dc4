"""What an admin does to the policy's state: the users held after a sending spike (`hato user
held|release`) and the clients blocked for failed AUTHs (`hato user blocked|unblock`).

One piece for both ways a command reaches that state: with the server running, the control
socket's op runs it in the server, which logs the action in its own log (as it does `hato queue
release`'s); with it stopped, the command runs it on the store itself and logs on its stderr.
Each lifting is one log line (`admin-unhold user=...`, `admin-unblock client=...`).

May import hato.model only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from hato.model import logfmt
from hato.policy.authlimit import AuthThrottle, client_key
from hato.policy.ratelimit import SendLimiter


class NotAClient(ValueError):
    """Neither an IP address nor an IPv6 /64 as `hato user blocked` lists them."""


def blocked_key(client: str) -> str:
    """The key a block is held under, for an IP address or for the IPv6 /64 `blocks` lists
    (policy/authlimit.py client_key: a client is counted by its IPv4 address, its IPv6 /64)."""
    text = client.strip().strip("[]")
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
            if network.version != 6 or network.prefixlen != 64:
                raise NotAClient(f"{client}: a network is blocked as an IPv6 /64 only")
            return client_key(str(network.network_address))
        return client_key(text)
    except ValueError as exc:
        if isinstance(exc, NotAClient):
            raise
        raise NotAClient(f"{client}: not an IP address (as `hato user blocked` lists)") from None


class PolicyAdmin:
    """The admin's actions on the AUTH throttle and the sending limiter (None: it has none)."""

    def __init__(
        self,
        throttle: AuthThrottle | None,
        limiter: SendLimiter | None,
        log: Callable[[str], None],
    ) -> None:
        self._throttle = throttle
        self._limiter = limiter
        self._log = log

    def blocks(self) -> list[tuple[str, float]]:
        """(client as counted, wall-clock end) of each AUTH block in force."""
        return [] if self._throttle is None else self._throttle.blocks()

    def unblock(self, client: str) -> str | None:
        """Lift the AUTH block of `client` (and its count of failures): the key it was
        blocked under, or None when it was not blocked (nothing changed, nothing logged)."""
        key = blocked_key(client)
        if self._throttle is None or key not in dict(self._throttle.blocks()):
            return None
        self._throttle.unblock(key.split("/")[0])  # an address of the /64 names it
        self._log(logfmt("admin-unblock", client=key))
        return key

    def holds(self) -> list[tuple[str, float]]:
        """(user, wall-clock end: inf until released) of each user held after a spike."""
        return [] if self._limiter is None else self._limiter.holds()

    def release(self, user: str) -> bool:
        """Let a held user send again (their spike count starts anew); whether they were held.
        Asked first: `unhold` of a user not held would still reset their spike count."""
        if self._limiter is None or not self._limiter.held(user):
            return False
        self._limiter.unhold(user)
        self._log(logfmt("admin-unhold", user=user))
        return True
