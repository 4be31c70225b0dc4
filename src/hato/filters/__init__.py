"""Content filters Hato asks about a message before it accepts it: rspamd (HTTP protocol v2).

Must not import anything of hato but model.
"""

from hato.filters.rspamd import (
    Envelope,
    Learned,
    RspamdAction,
    RspamdClient,
    RspamdUnavailable,
    Scan,
    chunks_of,
    parse_scan,
)

__all__ = [
    "Envelope",
    "Learned",
    "RspamdAction",
    "RspamdClient",
    "RspamdUnavailable",
    "Scan",
    "chunks_of",
    "parse_scan",
]
