"""One log line per event: ``event=NAME key=value ...`` (logfmt), shared by every room.

Must not import anything of hato.
"""

from __future__ import annotations

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@<>+=,[]")


def logvalue(value: object) -> str:
    """One field's value as `logfmt` writes it (for a line built by hand on a hot path, such
    as the session's connect and disconnect lines: the same text, without the keywords)."""
    text = str(value)
    if text and _SAFE.issuperset(text):  # one C call, not a generator step per character
        return text
    # Quote anything else; control characters are escaped so a peer cannot forge log lines.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():  # one C call for the usual value (a space, say), else per char
        escaped = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped)
    return f'"{escaped}"'


def logfmt(event: str, **fields: object) -> str:
    """``logfmt("queued", id="A1", size=10)`` -> ``'event=queued id=A1 size=10'``."""
    parts = [f"event={event}"]
    parts.extend(f"{key}={logvalue(val)}" for key, val in fields.items() if val is not None)
    return " ".join(parts)
