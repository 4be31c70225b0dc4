"""Mail on port 25 that names one of our own domains as its author (RFC5322.From).

Theory: our users send through submission with AUTH (RFC 6409), and what leaves us is
DKIM-signed by us from the hosts our SPF names. A stranger's message claiming to be from one
of our domains is judged as if the domain published DMARC `p=reject` (authcheck/ownfrom.py:
an aligned SPF or DKIM pass), whatever it publishes: a spoof of our own users to our own
users is refused (`550 5.7.1`, RFC 7489 §6.6.4 / §10.2 "local policy", RFC 3463 X.7.1), or
put in the Junk folder if the admin says so. Two exceptions the admin configures:
- a relay we trust (a gateway in front of us, our other servers, a forwarder of ours), by
  client address; it may use our domains in MAIL FROM too;
- a forwarder or mailing list whose ARC seal we trust (RFC 8617 §7.2: a receiver may use a
  valid chain to override a DMARC failure by local policy), by the domain of its seal.
The same judgement, with the same exceptions, holds for a Sender, Resent-From or
Resent-Sender in our domains (RFC 5322 §3.6.2, §3.6.6: readers show "ceo on behalf of ...").
A From whose display name or comment reads as one of our addresses while the address is a
stranger's (`"ceo@example.org" <x@attacker.example>`) cannot be judged by authentication at
all (nothing claims our domain); by default it goes to the Junk folder, never refused
(`display_name_decision`): mailing lists that rewrite a From for DMARC write the poster's
address into the display name (`"alice@example.org via list"`), and trusting the list's ARC
seal or DKIM signature is what lifts it.

May import hato.model only.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from hato.model import Reply
from hato.policy.decision import Accept, Defer, Reject

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7489 §6.6.4 (a receiver's local policy may be stricter), RFC 3463 X.7.1: delivery not
# authorized. The text tells a user of ours who tried port 25 where to send.
OWN_DOMAIN_SPOOF = Reply(
    550,
    "5.7.1",
    "Message refused: From address in a local domain, not sent through its servers "
    "(authenticate on the submission port 587 to send)",
)
# RFC 5322 §3.6.2, §3.6.6: the agent that sent or resent the message, shown by readers.
OWN_SENDER_SPOOF = Reply(
    550,
    "5.7.1",
    "Message refused: Sender or Resent- address in a local domain, not sent through its "
    "servers (authenticate on the submission port 587 to send)",
)
# RFC 5322 §3.4: the display name is for the reader; one that reads as our address is not ours.
OWN_NAME_SPOOF = Reply(
    550, "5.7.1", "Message refused: From display name reads as an address in a local domain"
)
# RFC 7489 §11.2 temperror; RFC 3463 X.4.3: directory (DNS) server failure, try later.
OWN_DOMAIN_DEFER = Reply(
    451, "4.4.3", "Temporary DNS failure checking the sender's domain, try later"
)


class OwnDomainAction(enum.Enum):
    REJECT = "reject"  # 550 5.7.1 (the default)
    QUARANTINE = "quarantine"  # into the recipient's Junk folder
    DMARC = "dmarc"  # only what the domain's own DMARC record says


class DisplayNameAction(enum.Enum):
    QUARANTINE = "quarantine"  # into the recipients' Junk folder (the default)
    REJECT = "reject"  # 550 5.7.1
    ACCEPT = "accept"  # not judged


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Deliver, into the recipients' Junk folder."""


@dataclass(frozen=True, slots=True)
class OwnDomains:
    """[authcheck] own_domains, own_domains_relays, own_domains_arc_sealers."""

    action: OwnDomainAction = OwnDomainAction.REJECT
    relays: tuple[IPNetwork, ...] = ()
    arc_sealers: frozenset[str] = frozenset()  # lower-case, no trailing dot
    display_names: DisplayNameAction = DisplayNameAction.QUARANTINE

    def relayed(self, client_ip: str) -> bool:
        """Whether the client is a relay we trust with our own domains."""
        if not self.relays or not client_ip:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:192.0.2.1 from a dual-stack socket
        return any(address in network for network in self.relays)

    def sealed_by_trusted(self, seal_domain: str) -> bool:
        return seal_domain.rstrip(".").lower() in self.arc_sealers


@dataclass(frozen=True, slots=True)
class OwnFromFacts:
    """What the checks found for a message whose From names one of our domains."""

    passed: bool  # aligned SPF or DKIM pass (authcheck/ownfrom.py as_if_reject)
    temperror: bool  # an aligned check could not finish
    relayed: bool = False  # the client is one of `relays`
    arc_trusted: bool = False  # a valid ARC chain whose newest seal is a trusted sealer's
    sender_field: bool = False  # judged for a Sender/Resent-* address, not the From


@dataclass(frozen=True, slots=True)
class DisplayNameFacts:
    """A From whose display name or comment reads as one of our addresses, its address not."""

    relayed: bool = False  # the client is one of `relays`
    vouched: bool = False  # a trusted sealer's valid ARC seal or DKIM signature


def own_from_decision(
    rule: OwnDomains, facts: OwnFromFacts
) -> Accept | Reject | Defer | Quarantine:
    if rule.action is OwnDomainAction.DMARC or facts.passed or facts.relayed:
        return Accept()
    if facts.arc_trusted:
        return Accept()  # RFC 8617 §7.2.1: a trusted intermediary vouches for its change
    if facts.temperror:
        return Defer(OWN_DOMAIN_DEFER)  # RFC 7489 §11.2: never a 5xx for a DNS hiccup
    if rule.action is OwnDomainAction.QUARANTINE:
        return Quarantine()
    return Reject(OWN_SENDER_SPOOF if facts.sender_field else OWN_DOMAIN_SPOOF)


def display_name_decision(
    rule: OwnDomains, facts: DisplayNameFacts
) -> Accept | Reject | Quarantine:
    """RFC 5322 §3.4: the display name is free text for the reader, so no authentication can
    vouch for it; one naming our address beside a stranger's is a spoof a reader falls for
    (RFC 7489 §12.4: display-name attacks, which DMARC does not address). Local policy."""
    if rule.display_names is DisplayNameAction.ACCEPT or facts.relayed or facts.vouched:
        return Accept()
    if rule.display_names is DisplayNameAction.REJECT:
        return Reject(OWN_NAME_SPOOF)
    return Quarantine()
