"""Which names can be a mailbox: one directory name under the mailboxes root, and nothing more.

The resolver refuses a local part that cannot be one (so a quoted local part like ``"../x"``
never reaches the file system), and the Maildir courier checks again before it makes a path.
"""

from __future__ import annotations

import unicodedata

# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets; §4.5.3.1.2: a domain at most 255.
MAX_LOCAL = 64
MAX_DOMAIN = 255


def is_safe_mailbox_name(name: str, max_octets: int = MAX_LOCAL) -> bool:
    """Whether `name` can be one directory name under the mailboxes root, and nothing more.

    Refused: "/", "\\", NUL and other control characters, "." and "..", a leading "." (hidden,
    and Maildir++ folder names), the empty name, more than `max_octets` UTF-8 octets.
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return False
    try:
        if len(name.encode("utf-8")) > max_octets:
            return False
    except UnicodeEncodeError:  # lone surrogates cannot be a file name
        return False
    return not any(unicodedata.category(ch) == "Cc" for ch in name)
