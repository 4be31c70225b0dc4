"""Decisions as values: relay control, port roles, network rules (OP25B, DNSBL), AUTH
throttling and per-user sending limits.

May import hato.model only. Nothing here does I/O: the session gathers the facts, a function
here turns them into Accept / Reject(reply) / Defer(reply). State (throttles, limits) takes
its time from a `Clock`; DNS comes through the `Resolver` seam.
"""

from hato.policy.authlimit import (
    AUTH_BLOCKED,
    AUTH_FAILED,
    AuthFailure,
    AuthThrottle,
    AuthThrottleSettings,
    client_key,
)
from hato.policy.decision import Accept, Decision, Defer, Reject
from hato.policy.networks import (
    ClientNetwork,
    ConnectionVerdict,
    ListenerNetworkRules,
    NetworkTable,
    connection_check,
    connection_decision,
)
from hato.policy.ownfrom import (
    OWN_DOMAIN_SPOOF,
    DisplayNameAction,
    DisplayNameFacts,
    OwnDomainAction,
    OwnDomains,
    OwnFromFacts,
    Quarantine,
    display_name_decision,
    own_from_decision,
)
from hato.policy.ratelimit import LIMITS_DB, Reservation, SendLimiter, SendLimitSettings, SpikeAlert
from hato.policy.relay import (
    MAX_ORIGINATOR_FIELDS,
    HeaderFacts,
    RecipientFacts,
    SenderFacts,
    header_decision,
    mail_from_decision,
    rcpt_decision,
)

__all__ = [
    "AUTH_BLOCKED",
    "AUTH_FAILED",
    "LIMITS_DB",
    "MAX_ORIGINATOR_FIELDS",
    "OWN_DOMAIN_SPOOF",
    "Accept",
    "AuthFailure",
    "AuthThrottle",
    "AuthThrottleSettings",
    "ClientNetwork",
    "ConnectionVerdict",
    "Decision",
    "Defer",
    "DisplayNameAction",
    "DisplayNameFacts",
    "HeaderFacts",
    "ListenerNetworkRules",
    "NetworkTable",
    "OwnDomainAction",
    "OwnDomains",
    "OwnFromFacts",
    "Quarantine",
    "RecipientFacts",
    "Reject",
    "Reservation",
    "SendLimitSettings",
    "SendLimiter",
    "SenderFacts",
    "SpikeAlert",
    "client_key",
    "connection_check",
    "connection_decision",
    "display_name_decision",
    "header_decision",
    "mail_from_decision",
    "own_from_decision",
    "rcpt_decision",
]
