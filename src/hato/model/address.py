"""Mailbox addresses and SMTP paths (RFC 5321 §4.1.2, RFC 6531 for SMTPUTF8).

Domains are kept in one normal form, so that two spellings of the same name (`ｅxample.org`
in full-width letters, `bu\u0308cher.test` decomposed) compare equal everywhere: the UTS #46
mapping (case folding, width and compatibility forms, NFC), then IDNA2008 (RFC 5891) must
accept the result; a name it refuses is not a domain.

Must not import anything of hato; `idna` (the UTS #46 and IDNA2008 tables) is the one library.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna


class AddressError(ValueError):
    """A path or mailbox that does not follow RFC 5321 §4.1.2."""


# RFC 5322 §3.2.3 atext, as used by RFC 5321 §4.1.2 Atom.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# RFC 6531 §3.3: atext is extended with UTF8-non-ascii when SMTPUTF8 is in use.
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
# RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str]
_SUB_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SUB_DOMAIN_UTF8 = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
# RFC 5321 §4.1.3 General-address-literal = Standardized-tag ":" 1*dcontent
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")

# RFC 5321 §4.5.3.1.1 / §4.5.3.1.2 / §4.5.3.1.3
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: local part (unquoted, case kept) and domain (lower case).

    `domain` is an address literal like ``[192.0.2.1]`` when one was given.
    """

    local: str
    domain: str

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def domain_ascii(self) -> str:
        """The domain in A-label form (IDNA), for DNS."""
        if self.is_literal:
            return self.domain
        return domain_a_label(self.domain)

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii() or not self.domain.isascii()

    def __str__(self) -> str:
        return f"{quote_local_part(self.local)}@{self.domain}"

    @classmethod
    def parse(cls, text: str, *, utf8: bool = True) -> Address:
        """Parse a bare mailbox ``local@domain`` (no angle brackets)."""
        return parse_mailbox(text, utf8=utf8)


ReversePath = Address | None
"""MAIL FROM's path: ``None`` is the null reverse-path ``<>`` (RFC 5321 §4.5.5)."""


def quote_local_part(local: str) -> str:
    """RFC 5321 §4.1.2: a local part that is not a Dot-string is sent as a Quoted-string."""
    if _DOT_STRING_UTF8.fullmatch(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_path(path: ReversePath) -> str:
    """``<local@domain>`` or ``<>``."""
    return "<>" if path is None else f"<{path}>"


def _parse_local_part(text: str, utf8: bool) -> tuple[str, str]:
    """Return (local part, rest starting at '@')."""
    if text.startswith('"'):
        # RFC 5321 §4.1.2 Quoted-string: qtextSMTP / quoted-pairSMTP
        out: list[str] = []
        i = 1
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                if i + 1 >= len(text):
                    raise AddressError("unterminated quoted-pair in local part")
                nxt = text[i + 1]
                if not (" " <= nxt <= "~"):
                    raise AddressError("invalid quoted-pair in local part")
                out.append(nxt)
                i += 2
                continue
            if ch == '"':
                return "".join(out), text[i + 1 :]
            code = ord(ch)
            if code in (32, 33) or 35 <= code <= 91 or 93 <= code <= 126 or (code >= 0x80 and utf8):
                out.append(ch)
            else:
                raise AddressError("invalid character in quoted local part")
            i += 1
        raise AddressError("unterminated quoted local part")
    at = text.rfind("@")
    if at <= 0:
        raise AddressError("mailbox needs local-part@domain")
    local = text[:at]
    pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
    if not pattern.fullmatch(local):
        raise AddressError("invalid local part")
    return local, text[at:]


def normalize_domain(text: str) -> str:
    """The one form a domain name is compared in: lower case; a name with non-ASCII
    characters goes through the UTS #46 mapping (non-transitional, STD3 rules: §4 of
    Unicode TR46), which ends in NFC, and must then be valid IDNA2008 (RFC 5891 §4).
    Raises AddressError for a name that has no such form."""
    if text.isascii():
        return text.lower()
    try:
        mapped: str = idna.uts46_remap(text, std3_rules=True, transitional=False)
        idna.encode(mapped, uts46=False)
    except UnicodeError as exc:  # idna.IDNAError is a UnicodeError
        raise AddressError(f"domain is not a valid internationalized name: {exc}") from None
    return mapped


def domain_a_label(domain: str) -> str:
    """A normalized domain (see `normalize_domain`) in A-label form (RFC 5890 §2.3.2.1)."""
    if domain.isascii():
        return domain
    try:
        encoded: bytes = idna.encode(domain, uts46=False)
    except UnicodeError as exc:
        raise AddressError(f"domain is not a valid internationalized name: {exc}") from None
    return encoded.decode("ascii")


def _parse_domain(text: str, utf8: bool) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise AddressError("unterminated address literal")
        inner = text[1:-1]
        if inner.lower().startswith("ipv6:"):
            try:
                ipaddress.IPv6Address(inner[5:])
            except ValueError as exc:
                raise AddressError("invalid IPv6 address literal") from exc
            return "[IPv6:" + inner[5:].lower() + "]"
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            if not _GENERAL_LITERAL.fullmatch(inner):
                raise AddressError("invalid address literal") from None
        return text
    if not text or len(text.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("invalid domain length")
    if not utf8 and not text.isascii():
        raise AddressError("invalid domain")
    # UTS #46 first: a full-width dot (U+3002) separates labels like ".".
    text = normalize_domain(text)
    pattern = _SUB_DOMAIN_UTF8 if utf8 else _SUB_DOMAIN
    labels = text.split(".")
    for label in labels:
        if not pattern.fullmatch(label) or len(label.encode("utf-8")) > 63:
            raise AddressError("invalid domain")
    return text


def _utf8_text(text: str) -> None:
    """RFC 6531 §3.3: an address is UTF-8. A lone surrogate (JSON's "\\udcff", from the
    control socket or a maildrop file) is no character of it: an AddressError, not the
    UnicodeEncodeError that ended the maildrop's pickup."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AddressError("not UTF-8 text") from None


def parse_mailbox(text: str, *, utf8: bool = True) -> Address:
    """Parse RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal )."""
    _utf8_text(text)
    local, rest = _parse_local_part(text, utf8)
    if not rest.startswith("@"):
        raise AddressError("mailbox needs local-part@domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    domain = _parse_domain(rest[1:], utf8)
    return Address(local, domain)


def parse_path(text: str, *, utf8: bool = True, allow_null: bool = False) -> ReversePath:
    """Parse an RFC 5321 §4.1.2 Path ``<[A-d-l:]Mailbox>``; ``<>`` when `allow_null`.

    A source route (A-d-l) is accepted and ignored (RFC 5321 §4.1.2, Appendix C).
    Raises AddressError for anything else.
    """
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError("path must be enclosed in <>")
    _utf8_text(text)
    if len(text.encode("utf-8")) > MAX_PATH + 2:
        raise AddressError("path longer than 256 octets")
    inner = text[1:-1]
    if inner == "":
        if allow_null:
            return None
        raise AddressError("null path not allowed here")
    if inner.startswith("@"):
        # RFC 5321 §4.1.2 A-d-l = At-domain *( "," At-domain ) ":"
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("source route without ':'")
        for hop in inner[:colon].split(","):
            if not hop.startswith("@"):
                raise AddressError("invalid source route")
            _parse_domain(hop[1:], utf8)
        inner = inner[colon + 1 :]
    return parse_mailbox(inner, utf8=utf8)
