"""Accounts of the local domains: users and their argon2id password hashes, on SQLite.

`UserStore` implements `hato.model.UserDirectory` (RCPT-time "is this a user?") and is what
SMTP AUTH verifies passwords against and what the CLI edits.

Must not import anything of hato but model.
"""

from hato.accounts.store import (
    AccountError,
    UnknownUser,
    UserExists,
    UserStore,
    canonical_key,
    read_account_keys,
)

__all__ = [
    "AccountError",
    "UnknownUser",
    "UserExists",
    "UserStore",
    "canonical_key",
    "read_account_keys",
]
