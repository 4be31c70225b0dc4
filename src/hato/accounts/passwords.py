"""Which new passwords are too weak to accept: too short, common, or made of the address.

NIST SP 800-63B §5.1.1.2 asks a verifier to refuse passwords found in lists of commonly used
or compromised values, repetitive or sequential characters, and context-specific words (the
user name, the service). An SMTP submission account is guessed over the network by bots that
try exactly these first (see contrib/fail2ban), so the bar is higher than SP 800-63B's minimum
of 8: 12 characters. `common-passwords.txt`, shipped with the package, holds the values those
lists begin with; a password that is one of them after lower-casing and stripping the digits
and symbols people add at the ends (`Password2024!`) is refused too.

Must not import anything of hato but model.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

from hato.model import Address

MIN_LENGTH = 12
_KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "abcdefghijklmnopqrstuvwxyz")
_ENDS = re.compile(r"^[\d\W_]+|[\d\W_]+$")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lower-case (comment lines start with #)."""
    text = importlib.resources.files(__package__).joinpath("common-passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def weakness(password: str, address: Address | None = None) -> str | None:
    """Why `password` is too weak, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"it has {len(password)} characters; use at least {MIN_LENGTH}"
    lowered = password.lower()
    common = common_passwords()
    if lowered in common or _ENDS.sub("", lowered) in common:
        return "it is on the list of common passwords that are guessed first"
    if len(set(lowered)) <= 2 or _repeats(lowered):
        return "it repeats a few characters"
    if _sequential(lowered):
        return "it is a run of keys in a row (like 123456 or qwerty)"
    if address is not None and _mostly_address(lowered, address):
        return "it is made of the address itself"
    return None


def _repeats(text: str) -> bool:
    """A short chunk written again and again: abcabcabcabc, 121212121212."""
    return any(
        len(text) % size == 0 and text == text[:size] * (len(text) // size)
        for size in range(1, min(4, len(text) // 2) + 1)
    )


def _sequential(text: str) -> bool:
    core = _ENDS.sub("", text) or text
    for row in _KEYBOARD_ROWS:
        doubled = row * 3
        if core in doubled or core in doubled[::-1]:
            return True
    return False


def _mostly_address(text: str, address: Address) -> bool:
    """Little is left once the local part and the domain's labels are taken out."""
    rest = text
    words = [address.local.lower(), *address.domain.lower().split(".")]
    for word in sorted(words, key=len, reverse=True):
        if len(word) >= 3:
            rest = rest.replace(word, "")
    return len(_ENDS.sub("", re.sub(r"[\d\W_]", "", rest))) < 4
