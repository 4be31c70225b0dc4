"""Relay control: who may send mail where, by listener role.

Theory: on the `mx` role we are the final destination for our own domains and nothing else, so
a recipient outside them is relaying and is refused (no open relay, RFC 5321 §3.6.2 and
RFC 2505 §2). Recipients of our domains must exist at RCPT time (RFC 5321 §3.3: reject unknown
users then, not with a bounce later).
"""

from __future__ import annotations

from dataclasses import dataclass

from hato.model import Reply, Role
from hato.model.frozen import quick_init
from hato.policy.decision import ACCEPT, Decision, Defer, Reject

RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
OWN_DOMAIN_ON_MX = Reply(
    550, "5.7.1", "Sender in a local domain: authenticate on the submission port (587) to send"
)
NOT_YOUR_SENDER = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
SEVERAL_FROM = Reply(550, "5.7.1", "Message refused: more than one From header field")
# RFC 5322 §3.6: one From and one Sender; the Resent- fields once per resending (§3.6.6). Each
# address is parsed and looked up: thousands of fields took seconds of the event loop.
MAX_ORIGINATOR_FIELDS = 50
TOO_MANY_ORIGINATORS = Reply(
    550,
    "5.7.1",
    f"Message refused: more than {MAX_ORIGINATOR_FIELDS} From, Sender and Resent- header fields",
)
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")


@quick_init
@dataclass(frozen=True, slots=True)
class SenderFacts:
    role: Role
    queue_has_room: bool
    authenticated: bool = False
    sender_is_local: bool = False  # the envelope sender's domain is one of ours
    sender_owned: bool = False  # the authenticated user owns the envelope sender (or it is <>)
    trusted_relay: bool = False  # the client is one of [authcheck] own_domains_relays


@quick_init
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
    if facts.authenticated:
        # Sender-login binding (RFC 6409 §6.1: the submission server may check that the
        # sender is one the user is authorized to use); RFC 3463 X.7.1 not authorized.
        return ACCEPT if facts.sender_owned else Reject(NOT_YOUR_SENDER)
    if facts.role is Role.MX and facts.sender_is_local and not facts.trusted_relay:
        # Our own users send through submission with AUTH; from the outside, a sender in our
        # domain on port 25 is a spoof of one of them (RFC 7208 §1 describes the threat).
        # A relay the admin trusts with our domains (policy/ownfrom.py) is not the outside.
        return Reject(OWN_DOMAIN_ON_MX)
    return ACCEPT


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What intake/headers.py found in the whole header section of a submitted message."""

    malformed_line: int = 0  # the first line that is no header field (from 1), or 0
    unowned_field: str = ""  # the first of From/Sender/Resent-* naming an address not owned
    from_fields: int = 1
    originator_fields: int = 0  # From, Sender and Resent-* fields: past the limit, not read

    @property
    def problem(self) -> str:
        """The first thing wrong, as the log names it ("" when nothing is)."""
        if self.originator_fields > MAX_ORIGINATOR_FIELDS:
            return "too-many-originators"
        if self.malformed_line:
            return "header-malformed"
        if self.unowned_field:
            return f"{self.unowned_field.lower()}-not-owned"
        if self.from_fields > 1:
            return "several-from"
        return ""


def header_decision(facts: HeaderFacts) -> Decision:
    """After DATA on submission, before the DKIM signature makes the message ours."""
    match facts.problem:
        case "":
            return ACCEPT
        case "header-malformed":
            # RFC 5322 §2.2, §3.6.8: readers disagree about such a line (some stop there, some
            # read on), so no check could say what the recipient will see. RFC 3463 X.6.0.
            return Reject(
                Reply(
                    554,
                    "5.6.0",
                    f"Message refused: header line {facts.malformed_line} is not a header "
                    "field (name and colon, RFC 5322 section 2.2)",
                )
            )
        case "several-from":
            # RFC 5322 §3.6: exactly one From field; a reader shows one, a check judges another.
            return Reject(SEVERAL_FROM)
        case "too-many-originators":
            # RFC 5322 §3.6, §3.6.6: no real message has that many (see MAX_ORIGINATOR_FIELDS).
            return Reject(TOO_MANY_ORIGINATORS)
    # RFC 6409 §6.1 (as for MAIL FROM): every author and sender address must be the user's;
    # Sender and Resent-* are shown by readers too ("bob on behalf of alice").
    return Reject(
        Reply(553, "5.7.1", f"{facts.unowned_field}: address not owned by the authenticated user")
    )


def rcpt_decision(facts: RecipientFacts) -> Decision:
    if facts.local_domain:
        # RFC 5321 §4.2.3 550 / RFC 3463 §3.2 X.1.1: bad destination mailbox address.
        return ACCEPT if facts.known else Reject(UNKNOWN_USER)
    if facts.role is not Role.MX and facts.authenticated:
        return ACCEPT
    # RFC 5321 §3.6.2: relaying only for clients we know; RFC 3463 X.7.1: not authorized.
    return Reject(RELAY_DENIED)
