"""The directory: the address book every part of the server asks.

Which domains are local (`RecipientResolver.is_local_domain`, decided here once), who is a
local recipient (`resolver`: users, aliases, ``+tag``, role names, catch-all, accept_any,
postmaster), the aliases file (`aliases`), the Sender Rewriting Scheme for forwarded mail
(`srs`), which names can be a mailbox (`names`), and the last check at delivery that an
address is still somebody's (`known`). The SMTP session, local submission, the control socket
and the delivery router all ask it; none decides these things on its own.

Must not import anything of hato but model and accounts (shared/DESIGN.md).
"""

from hato.directory.aliases import AliasFileError, AliasTable, AliasTarget
from hato.directory.names import is_safe_mailbox_name
from hato.directory.resolver import (
    Local,
    LocalDomain,
    NotLocal,
    RecipientResolver,
    Resolution,
    Unknown,
)

__all__ = [
    "AliasFileError",
    "AliasTable",
    "AliasTarget",
    "Local",
    "LocalDomain",
    "NotLocal",
    "RecipientResolver",
    "Resolution",
    "Unknown",
    "is_safe_mailbox_name",
]
