"""Relay control: who may send mail where, by listener role.

Theory: on the `mx` role we are the final destination for our own domains and nothing else, so
a recipient outside them is relaying and is refused (no open relay, RFC 5321 §3.6.2 and
RFC 2505 §2). Recipients of our domains must exist at RCPT time (RFC 5321 §3.3: reject unknown
users then, not with a bounce later).
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.model import Reply, Role
from hato.policy.decision import Accept, Decision, Defer, Reject

RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")


@dataclass(frozen=True, slots=True)
class SenderFacts:
    role: Role
    queue_has_room: bool


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    role: Role
    local_domain: bool  # the domain is one of ours
    known: bool  # a user, alias, catch-all or postmaster of that domain
    authenticated: bool = False


def mail_from_decision(facts: SenderFacts) -> Decision:
    if not facts.queue_has_room:
        # RFC 5321 §4.2.3 / RFC 3463 §3.4: 452 4.3.1 when the spool has no room.
        return Defer(NO_STORAGE)
    return Accept()


def rcpt_decision(facts: RecipientFacts) -> Decision:
    if facts.local_domain:
        # RFC 5321 §4.2.3 550 / RFC 3463 §3.2 X.1.1: bad destination mailbox address.
        return Accept() if facts.known else Reject(UNKNOWN_USER)
    if facts.role is not Role.MX and facts.authenticated:
        return Accept()
    # RFC 5321 §3.6.2: relaying only for clients we know; RFC 3463 X.7.1: not authorized.
    return Reject(RELAY_DENIED)
