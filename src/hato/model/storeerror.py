"""A shared store (the PostgreSQL of several nodes) that cannot answer now.

Must not import anything of hato but model.
"""

from __future__ import annotations

from hato.model.reply import Reply

# RFC 5321 §4.2.5 451 (local error, try again later); RFC 3463 §3.4 X.3.0 (a system problem).
STORE_UNAVAILABLE = Reply(451, "4.3.0", "Local error in processing; try again later")


class StoreUnavailable(Exception):
    """The shared store cannot be reached or did not answer in time: a temporary failure (the
    client retries; nothing was changed)."""

    reply = STORE_UNAVAILABLE
