"""Values shared by every room, and the Protocols that are the seams between rooms.

Must not import anything of hato, nor any I/O module: stdlib values only.
"""

from hato.model.address import Address, AddressError, ReversePath, format_path, parse_path
from hato.model.logfmt import logfmt
from hato.model.message import Courier, QueuedMessage, QueuedRecipient
from hato.model.outcome import Delivered, Outcome, PermFailed, TempFailed
from hato.model.reply import Reply
from hato.model.role import Role
from hato.model.seams import Clock, SystemClock, UserDirectory

__all__ = [
    "Address",
    "AddressError",
    "Clock",
    "Courier",
    "Delivered",
    "Outcome",
    "PermFailed",
    "QueuedMessage",
    "QueuedRecipient",
    "Reply",
    "ReversePath",
    "Role",
    "SystemClock",
    "TempFailed",
    "UserDirectory",
    "format_path",
    "logfmt",
    "parse_path",
]
