"""What a sender asked to be told about one recipient: RFC 3461 NOTIFY and ORCPT, as values.

Must not import anything of hato.

The session builds a `RecipientDsn` from the RCPT parameters (`RecipientDsn.from_params`),
the queue keeps it on the recipient's row, the runner decides from it which delivery status
notifications to send, and the SMTP client passes it on to a next hop that offers DSN.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hato.model.frozen import quick_init


class Notify(enum.Enum):
    """RFC 3461 §4.1: the conditions a NOTIFY parameter can ask a DSN for."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


# RFC 3461 §4.1: without a NOTIFY parameter, an MTA acts as if NOTIFY=FAILURE,DELAY was given.
DEFAULT_NOTIFY = frozenset({Notify.FAILURE, Notify.DELAY})

# RFC 3461 §4: hexchar = "+" 2(%x30-39 / %x41-46)
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(text: str) -> str:
    """RFC 3461 §4: xtext back to its text ("+2B" is "+"); octets are taken as UTF-8.

    A "+" not followed by two hex digits is kept as it is (the value came through our own
    parser, which refuses that; a stored value must never make a notification fail).
    """
    if "+" not in text:
        return text
    raw = _HEXCHAR.sub(lambda m: f"\x00{m.group(1)}", text)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == "\x00":
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out += raw[i].encode("utf-8")
            i += 1
    return out.decode("utf-8", errors="replace")


# RFC 6533 §3: EmbeddedUnicodeChar = %x5C.78 "{" HEXPOINT "}" in a utf-8 address.
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


def unitext_decode(text: str) -> str:
    """RFC 6533 §3: a utf-8-addr-unitext (or, once xtext is undone, utf-8-addr-xtext) back to
    the address; a code point that is no character becomes U+FFFD (never an error)."""

    def char(match: re.Match[str]) -> str:
        point = int(match.group(1), 16)
        return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else "\ufffd"

    return _EMBEDDED.sub(char, text)


@quick_init
@dataclass(frozen=True, slots=True)
class RecipientDsn:
    """RFC 3461 per-recipient DSN data.

    `notify`: None when the client gave no NOTIFY (the RFC 3461 §4.1 default applies), the
    empty set for NOTIFY=NEVER, else the conditions asked for.
    `orcpt`: the ORCPT parameter decoded from xtext (and, for the utf-8 type, from RFC 6533
    §3's \\x{HEX} escapes), ``"addr-type;address"``
    (e.g. ``"rfc822;bob@example.org"``), or None when none was given.
    """

    notify: frozenset[Notify] | None = None
    orcpt: str | None = None

    def wants(self, condition: Notify) -> bool:
        """Whether a DSN for `condition` is wanted (RFC 3461 §4.1)."""
        chosen = DEFAULT_NOTIFY if self.notify is None else self.notify
        return condition in chosen

    @property
    def notify_param(self) -> str | None:
        """The NOTIFY value to relay to a next hop that offers DSN (RFC 3461 §5.2.1): None
        when the client gave none, "NEVER", or the words in RFC order."""
        if self.notify is None:
            return None
        if not self.notify:
            return "NEVER"
        return ",".join(n.value for n in Notify if n in self.notify)

    @classmethod
    def parse(cls, notify: str | None, orcpt: str | None) -> RecipientDsn:
        """From a NOTIFY value (as sent, or as `notify_param` gives it) and a decoded ORCPT.

        Words that are not NOTIFY conditions are ignored (the server core refuses them).
        """
        if notify is None:
            chosen: frozenset[Notify] | None = None
        else:
            words = {w.strip().upper() for w in notify.split(",")}
            # RFC 3461 §4.1: NEVER stands alone and asks for no DSN at all.
            chosen = frozenset(n for n in Notify if n.value in words and "NEVER" not in words)
        return cls(chosen, orcpt or None)

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> RecipientDsn:
        """From a RCPT command's parameters (keys upper-case, values as sent)."""
        orcpt = params.get("ORCPT")
        if orcpt is not None:
            # RFC 3461 §4.2: ORCPT=addr-type ";" xtext; kept decoded.
            addr_type, _, address = orcpt.partition(";")
            address = xtext_decode(address)
            if addr_type.strip().lower() == "utf-8":
                # RFC 6533 §3: the utf-8 type's \x{HEX} escapes are undone too.
                address = unitext_decode(address)
            orcpt = f"{addr_type};{address}"
        return cls.parse(params.get("NOTIFY"), orcpt)
