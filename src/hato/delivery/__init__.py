"""Delivery: where a queued message goes next. Local delivery lives here: who is a local
recipient (`local`: domains, users, aliases, +tags, catch-all), the aliases file (`aliases`),
and Maildir++ mailboxes (`maildir`). Outbound SMTP and LMTP belong to this room too.

Must not import anything of hato but model, smtp and crypto (shared/DESIGN.md); the local
delivery modules import model only.
"""

from hato.delivery.aliases import AliasFileError, AliasTable, AliasTarget
from hato.delivery.local import (
    Local,
    LocalDomain,
    NotLocal,
    RecipientResolver,
    Resolution,
    Unknown,
)
from hato.delivery.maildir import MaildirCourier, is_safe_mailbox_name

__all__ = [
    "AliasFileError",
    "AliasTable",
    "AliasTarget",
    "Local",
    "LocalDomain",
    "MaildirCourier",
    "NotLocal",
    "RecipientResolver",
    "Resolution",
    "Unknown",
    "is_safe_mailbox_name",
]
