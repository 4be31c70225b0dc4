"""A store that failed: its backend's own error (sqlite3's, psycopg's) as the store raises it,
so that the rooms above (the server, the CLI) need not know which backend holds it.

Must not import anything of hato but model.
"""

from __future__ import annotations

from hato.model.reply import Reply

# RFC 5321 §4.2.5 451 (local error, try again later); RFC 3463 §3.4 X.3.0 (a system problem).
STORE_UNAVAILABLE = Reply(451, "4.3.0", "Local error in processing; try again later")


class StoreError(Exception):
    """A store's backend failed (a locked, unreadable or corrupt file, a statement the database
    refused); the message names the store and the backend's reason, never a password."""


class StoreUnavailable(StoreError):
    """The shared store cannot be reached or did not answer in time: a temporary failure (the
    client retries; nothing was changed)."""

    reply = STORE_UNAVAILABLE
