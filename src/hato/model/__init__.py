"""Values shared by every room, and the Protocols that are the seams between rooms.

Must not import anything of hato, nor any I/O module: stdlib values only.
"""

from hato.model.address import (
    Address,
    AddressError,
    ReversePath,
    domain_a_label,
    format_path,
    normalize_domain,
    parse_path,
)
from hato.model.dsn import DEFAULT_NOTIFY, Notify, RecipientDsn, xtext_decode
from hato.model.logfmt import logfmt, logvalue
from hato.model.message import Courier, QueuedMessage, QueuedRecipient
from hato.model.outcome import Delivered, Handoff, Outcome, PermFailed, TempFailed
from hato.model.reply import Reply
from hato.model.role import Role
from hato.model.seams import Clock, SystemClock, UserDirectory

__all__ = [
    "DEFAULT_NOTIFY",
    "Address",
    "AddressError",
    "Clock",
    "Courier",
    "Delivered",
    "Handoff",
    "Notify",
    "Outcome",
    "PermFailed",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientDsn",
    "Reply",
    "ReversePath",
    "Role",
    "SystemClock",
    "TempFailed",
    "UserDirectory",
    "domain_a_label",
    "format_path",
    "logfmt",
    "logvalue",
    "normalize_domain",
    "parse_path",
    "xtext_decode",
]
