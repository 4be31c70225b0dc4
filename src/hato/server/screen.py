"""The mx screen's server side: what runs between accept() and the greeting, and the greylist
step at RCPT (the decisions are hato.policy.screen's and hato.policy.greylist's).

Theory of operation. `before_greeting` runs as the session's one task before its greeting:
an allow-listed client skips it all; then the connection rate (421 4.7.0, one shared SQLite
step), then the weighted DNSBL score (554 5.7.1 naming the lists), then the early-talker
wait: a "220-" first line, `pregreet_wait` seconds, then the session's own "220 " line
(RFC 5321 §4.2.1: one multi-line reply). The session keeps reading during the wait, so a
client that talks before the final line is seen at once (`early_talker`). Each piece costs
nothing when its key is not set; the screen is never built for submission.

`greylist` runs at RCPT, after the recipient is known: allow-listed clients and senders whose
SPF passes (RFC 7208 §2.6.3, asked only for a triplet that would be deferred) are exempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from hato.authcheck.spf import SpfResultCode, check_mail_from
from hato.model import Address, Clock, Reply, logfmt
from hato.model.dns import Resolver
from hato.policy import ListenerNetworkRules, NetworkTable, connection_check
from hato.policy.decision import Accept, Defer, Reject
from hato.policy.greylist import GreylistSettings, ScreenStore
from hato.policy.screen import (
    EARLY_TALKER,
    DnsblSite,
    client_key,
    dnsbl_decision,
    dnsbl_score,
)
from hato.server.metrics import Metrics

log = logging.getLogger("hato.smtpd")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# RFC 5321 §4.5.1 (postmaster must be reachable) and RFC 2142 §2 (abuse): reports about a
# problem with us get through at once.
_NEVER_GREYLISTED = frozenset({"postmaster", "abuse"})


@dataclass(frozen=True, slots=True)
class ScreenRules:
    """What [screen] asks for; empty/0/None parts are off."""

    sites: tuple[DnsblSite, ...] = ()
    threshold: int = 1
    allow: tuple[IPNetwork, ...] = ()
    pregreet_wait: float = 0.0
    pregreet_ttl: float = 86_400.0  # seconds a client that waited is not made to wait again
    connection_rate: int = 0  # per minute and client network
    greylist: GreylistSettings | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    """A client that passed the screen: whether a list vouched for it (greylisting spares
    it)."""

    allowed: bool = False


@dataclass(slots=True)
class Screen:
    rules: ScreenRules
    store: ScreenStore
    dns: Resolver
    clock: Clock
    hostname: str
    metrics: Metrics

    @property
    def pregreet(self) -> bool:
        return self.rules.pregreet_wait > 0

    async def before_greeting(
        self, ip: str, session: str, write: Callable[[bytes], bool]
    ) -> Reply | Screened:
        """The reply to greet with instead of 220, or Screened (then the session greets).
        `write` sends bytes ahead of the greeting; False once the session is closing."""
        rules = self.rules
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # RFC 4291 §2.5.5.2: an IPv4 client on a v6 socket
        if any(address in net for net in rules.allow):
            return Screened(allowed=True)
        if rules.connection_rate:
            rate = self.store.connection(client_key(ip), rules.connection_rate)
            if isinstance(rate, Defer):
                return self._refused(ip, session, "connection-rate", rate.reply)
        allowed = False
        if rules.sites:
            score = await dnsbl_score(ip, rules.sites, self.dns)
            for zone, detail in score.unknown:
                log.warning(logfmt("dnsbl-tempfail", session=session, client=ip, zone=zone,
                                   detail=detail))  # fmt: skip
            decision = dnsbl_decision(ip, score, rules.threshold)
            if isinstance(decision, Reject):
                log.info(logfmt("dnsbl-listed", session=session, client=ip, score=score.total,
                                lists=",".join(score.listed)))  # fmt: skip
                return self._refused(ip, session, "dnsbl", decision.reply)
            allowed = bool(score.allowed) and score.total <= 0
        key = client_key(ip)
        if rules.pregreet_wait and not self.store.passed(key):
            write(f"220-{self.hostname} ESMTP\r\n".encode("ascii"))
            await asyncio.sleep(rules.pregreet_wait)
            if write(b"") and rules.pregreet_ttl:
                # Postfix's postscreen_greet_ttl: a client that waited is spared the wait for
                # a while (its next connection is greeted at once).
                self.store.remember_pass(key, rules.pregreet_ttl)
        return Screened(allowed=allowed)

    def early_talker(self, ip: str, session: str) -> Reply:
        """A client sent a command before the greeting's last line (RFC 5321 §4.3.1)."""
        return self._refused(ip, session, "early-talker", EARLY_TALKER)

    async def greylist(
        self,
        screened: Screened,
        ip: str,
        helo: str,
        sender: Address | None,
        recipient: Address,
        session: str,
    ) -> Reply | None:
        """None to go on with RCPT, or the 451 4.7.1 of a new triplet."""
        settings = self.rules.greylist
        if settings is None or screened.allowed or recipient.local.lower() in _NEVER_GREYLISTED:
            return None
        network = client_key(ip, ipv4_prefix=24)
        mail_from = str(sender) if sender is not None else ""
        decision = self.store.greylist(network, mail_from, str(recipient), settings)
        if isinstance(decision, Accept):
            return None
        spf = await check_mail_from(
            ip,
            mail_from,
            helo=helo,
            resolver=self.dns,
            receiver=self.hostname,
            now=self.clock.now(),
        )
        if spf.result is SpfResultCode.PASS:
            return None  # RFC 7208 §2.6.3: the domain authorizes this client; no need to wait
        log.info(logfmt("greylisted", session=session, client=ip, sender=mail_from,
                        rcpt=recipient, reply=decision.reply.code))  # fmt: skip
        self.metrics.screen_refused("greylisted")
        return decision.reply

    def _refused(self, ip: str, session: str, reason: str, reply: Reply) -> Reply:
        log.info(logfmt("connection-refused", session=session, client=ip, reason=reason,
                        reply=reply.code))  # fmt: skip
        self.metrics.screen_refused(reason)
        return reply


async def network_refusal(
    ip: str,
    listener: str,
    rules: ListenerNetworkRules,
    networks: NetworkTable,
    dns: Resolver,
    session: str,
) -> Reply | None:
    """The OP25B network rules (hato.policy.networks): None, or the 554/421 to greet with."""
    verdict = await connection_check(ip, rules, networks, dns)
    for match in verdict.unknown:
        log.warning(logfmt("dnsbl-tempfail", session=session, client=ip, network=match.network,
                           detail=match.detail))  # fmt: skip
    if isinstance(verdict.decision, Accept):
        return None
    reply = verdict.decision.reply
    log.info(logfmt("connection-refused", listener=listener, client=ip, reason="network",
                    reply=reply.code))  # fmt: skip
    return reply
