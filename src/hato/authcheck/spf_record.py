"""The SPF record (RFC 7208 §4.6, §5, §6, §7, §12): its grammar, parsed whole before it is used.

`parse_record` turns a `v=spf1` TXT string into a `Record` of `Term`s and the `redirect=` and
`exp=` modifiers, or raises `PermError` for any syntax error anywhere in it (§4.6: a record
with a syntax error is a permerror even if the error is after the matching term). Macros (§7)
are tokenized here (`tokenize`: a bad one is a syntax error) and expanded by the check
(spf.py), since `%{p}` needs DNS. `PermError` and `TempError` are the check's two errors; they
become results at one point, in spf.py, and never leave the SPF check.

Must not import anything of hato.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_NEEDS_DOMAIN = frozenset({"include", "exists"})

# RFC 7208 §12: modifier name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z0-9]+)(.*)", re.DOTALL)
# RFC 7208 §12: ip4-cidr-length = "/" ( "0" / %x31-39 0*1DIGIT ), ip6 up to three digits.
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?\Z")
# RFC 7208 §12: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum /
# "-" ) alphanum ); domain-end = ( "." toplabel [ "." ] ) / macro-expand.
_DOMAIN_END = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z"
)
_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}", re.IGNORECASE)
_LETTERS = frozenset("slodiphv")  # RFC 7208 §7.2
_EXP_LETTERS = _LETTERS | frozenset("crt")  # RFC 7208 §7.2: c, r, t only in exp text


class PermError(Exception):
    """A permerror (RFC 7208 §2.6.7): becomes a result at the top of the check only."""


class TempError(Exception):
    """A temperror (RFC 7208 §2.6.6): becomes a result at the top of the check only."""


# -- macros (RFC 7208 §7) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Macro:
    letter: str  # as written: upper case means URL-escape (§7.3)
    digits: int  # 0 = all parts
    reverse: bool
    delimiters: str


Token = str | Macro


def tokenize(text: str, *, exp: bool) -> tuple[Token, ...]:
    """RFC 7208 §7.1 macro-string, or PermError for any syntax error."""
    tokens: list[Token] = []
    letters = _EXP_LETTERS if exp else _LETTERS
    pos = 0
    while pos < len(text):
        if text[pos] != "%":
            end = text.find("%", pos)
            end = len(text) if end < 0 else end
            literal = text[pos:end]
            # RFC 7208 §7.1: macro-literal = %x21-24 / %x26-7E (exp text also has spaces).
            if any(not ("!" <= ch <= "~") and not (exp and ch == " ") for ch in literal):
                raise PermError(f"invalid character in {text!r}")
            tokens.append(literal)
            pos = end
            continue
        nxt = text[pos + 1 : pos + 2]
        # RFC 7208 §7.1: "%%" is "%", "%_" a space, "%-" a URL-encoded space.
        simple = {"%": "%", "_": " ", "-": "%20"}.get(nxt)
        if simple is not None:
            tokens.append(simple)
            pos += 2
            continue
        match = _MACRO.match(text, pos)
        if match is None or match.group(1).lower() not in letters:
            # RFC 7208 §7.1: a "%" not followed by "{", "%", "-" or "_" is a syntax error.
            raise PermError(f"invalid macro in {text!r}")
        letter, digits, reverse, delimiters = match.groups()
        digits = digits.lstrip("0") if digits else ""
        if match.group(2) and not digits:
            raise PermError(f"zero transformer in {text[:60]!r}")  # §7.3: DIGIT must be nonzero
        # §7.3: the rightmost N parts; a name has at most 127, so more digits than 3 keep all
        # (int() refuses thousands of digits: a ValueError, the session's 421).
        count = 0 if not digits else int(digits) if len(digits) <= 3 else 999
        tokens.append(Macro(letter, count, bool(reverse), delimiters))
        pos = match.end()
    return tuple(tokens)


def domain_spec(text: str) -> tuple[Token, ...]:
    tokens = tokenize(text, exp=False)
    # RFC 7208 §7.1: a domain-spec ends in a macro-expand or "." toplabel, checked as written
    # (not after expansion).
    if not tokens or (isinstance(tokens[-1], str) and not _DOMAIN_END.search(text)):
        raise PermError(f"invalid domain-spec {text!r}")
    return tokens


# -- the record (RFC 7208 §4.6, §5, §6) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    text: str
    qualifier: str
    kind: str
    spec: tuple[Token, ...] = ()
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class Record:
    terms: tuple[Term, ...]
    redirect: tuple[Token, ...] | None
    exp: tuple[Token, ...] | None


def _parse_term(text: str) -> Term:
    match = _MECHANISM.fullmatch(text)
    if match is None or match.group(2).lower() not in _MECHANISMS:
        raise PermError(f"unknown term {text!r}")
    qualifier, kind, rest = match.group(1) or "+", match.group(2).lower(), match.group(3)
    if kind in ("ip4", "ip6"):
        return _parse_ip(text, qualifier, kind, rest)
    spec_text, cidr4, cidr6 = rest, 32, 128
    if kind in ("a", "mx"):
        slash = rest.find("/")
        cidr = _DUAL_CIDR.match(rest[slash:]) if slash >= 0 else None
        if cidr is not None:
            spec_text = rest[:slash]
            cidr4 = int(cidr.group(1) or 32)
            cidr6 = int(cidr.group(2) or 128)
            if cidr4 > 32 or cidr6 > 128:
                raise PermError(f"CIDR length out of range in {text!r}")
    if kind == "all":
        if rest:
            raise PermError(f"invalid term {text!r}")
        return Term(text, qualifier, kind)
    if not spec_text:
        if kind in _NEEDS_DOMAIN:
            raise PermError(f"{kind} needs a domain in {text!r}")
        return Term(text, qualifier, kind, (), cidr4, cidr6)
    if not spec_text.startswith(":") or len(spec_text) == 1:
        raise PermError(f"invalid term {text!r}")
    return Term(text, qualifier, kind, domain_spec(spec_text[1:]), cidr4, cidr6)


def _parse_ip(text: str, qualifier: str, kind: str, rest: str) -> Term:
    # RFC 7208 §5.6: ip4:<ip4-network>[/<cidr>], ip6:<ip6-network>[/<cidr>].
    if not rest.startswith(":"):
        raise PermError(f"invalid term {text!r}")
    address, _, length = rest[1:].partition("/")
    limit = 32 if kind == "ip4" else 128
    if length and (not length.isdigit() or length != str(int(length)) or int(length) > limit):
        raise PermError(f"invalid CIDR length in {text!r}")
    if "/" in rest[1:] and not length:
        raise PermError(f"empty CIDR length in {text!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise PermError(f"invalid address in {text!r}") from None
    if ip.version != (4 if kind == "ip4" else 6):
        raise PermError(f"wrong address family in {text!r}")
    network = ipaddress.ip_network(f"{ip}/{length or limit}", strict=False)
    return Term(text, qualifier, kind, network=network)


# Parsed records by their text: a busy MX sees the same few hundred records all day, and
# the text alone decides the result (the DNS cache decides which text is current).
@functools.lru_cache(maxsize=1024)
def parse_record(text: str) -> Record:
    """Parse a whole `v=spf1` record (RFC 7208 §4.6.1, §12); PermError on any error."""
    # RFC 7208 §3.1: records are 7-bit ASCII; §4.6.1: terms are separated by spaces only.
    if not text.isascii():
        raise PermError("non-ASCII SPF record")
    terms: list[Term] = []
    modifiers: dict[str, tuple[Token, ...]] = {}
    for word in text.split(" ")[1:]:
        if not word:
            continue
        modifier = _MODIFIER.fullmatch(word)
        if modifier is None:
            terms.append(_parse_term(word))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            # RFC 7208 §6: redirect and exp each at most once.
            if name in modifiers:
                raise PermError(f"{name}= given twice")
            modifiers[name] = domain_spec(value)
        else:
            tokenize(value, exp=False)  # RFC 7208 §6: unknown modifiers are ignored, if valid
    return Record(tuple(terms), modifiers.get("redirect"), modifiers.get("exp"))


def is_spf_record(text: bytes) -> bool:
    # RFC 7208 §4.5: "v=spf1" exactly (case-insensitively), then a space or the end.
    return text[:6].lower() == b"v=spf1" and text[6:7] in (b"", b" ")
