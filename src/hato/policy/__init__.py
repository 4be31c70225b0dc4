"""Decisions as values: relay control, port roles, and (later) rate limits and DNSBLs.

May import hato.model only. Nothing here does I/O: the session gathers the facts, a function
here turns them into Accept / Reject(reply) / Defer(reply).
"""

from hato.policy.decision import Accept, Decision, Defer, Reject
from hato.policy.relay import (
    RecipientFacts,
    SenderFacts,
    header_from_decision,
    mail_from_decision,
    rcpt_decision,
)

__all__ = [
    "Accept",
    "Decision",
    "Defer",
    "RecipientFacts",
    "Reject",
    "SenderFacts",
    "header_from_decision",
    "mail_from_decision",
    "rcpt_decision",
]
