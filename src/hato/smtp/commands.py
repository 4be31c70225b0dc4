"""Parsing the arguments of SMTP commands into events, or into the reply that refuses them.

Pure functions of text and settings; the state machine lives in server.py.
Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import binascii
import enum
import functools
import re
from dataclasses import dataclass
from typing import Literal

from hato.model import Address, AddressError, Reply, ReversePath, parse_path
from hato.smtp import replies as R
from hato.smtp.events import MailFrom, RcptTo, ServerSettings


class Verb(enum.Enum):
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    EXPN = "EXPN"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"

    # Members are singletons: identity hashing in C keeps the per-command table lookups
    # cheap (Enum's own __hash__ is a Python-level call).
    __hash__ = object.__hash__


# RFC 5321 §2.4: verbs are case-insensitive; the table is keyed by the upper-case bytes.
VERBS: dict[bytes, Verb] = {verb.value.encode("ascii"): verb for verb in Verb}


@dataclass(frozen=True, slots=True)
class Bad:
    """A refusal: the reply to send and the detail for the log."""

    reply: Reply
    detail: str


@dataclass(frozen=True, slots=True)
class Bdat:
    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: str
    initial: bytes | None


# RFC 5321 §4.1.2 esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# RFC 5321 §4.1.2 esmtp-value = 1*(%d33-60 / %d62-126), RFC 6531 §3.3 adds UTF8-non-ascii
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
# RFC 3461 §4: xtext = *( xchar / hexchar ), hexchar = "+" 2(%x30-39 / %x41-46)
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
# RFC 6533 §3: utf-8-addr-unitext = 1*(QUCHAR / EmbeddedUnicodeChar), the ORCPT form of a
# utf-8 address when the transaction uses SMTPUTF8 (QUCHAR: QCHAR or UTF-8 non-ASCII).
_UNITEXT = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\x\{[0-9A-Fa-f]{2,6}\})+"
)
# RFC 3461 §4.2 addr-type is an atom (RFC 5322 §3.2.3 atext)
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_DIGITS = re.compile(r"[0-9]{1,20}")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


# RFC 5321 §4.5.3.1.4: "SMTP extensions may be used to increase this limit". MAIL and RCPT
# carry the parameters of the extensions we offer on top of the 512 octets: ORCPT up to 500
# characters (RFC 3461 §4.2) with NOTIFY on RCPT; ENVID up to 100 (RFC 3461 §4.4), RET, SIZE
# (RFC 1870 §3), BODY (RFC 6152), AUTH= (RFC 4954 §5), SMTPUTF8, REQUIRETLS on MAIL. A client
# giving a 500-character ORCPT must not get "500 Line too long": 1024 octets more for them.
PARAMETERS_ALLOWANCE = 1024


def parameters_allowance(head: bytes) -> int:
    """Octets a command line starting with `head` (its first five octets, upper-case) may
    have past the plain command limit (PARAMETERS_ALLOWANCE for MAIL and RCPT, else 0)."""
    return PARAMETERS_ALLOWANCE if head in (b"MAIL ", b"RCPT ") else 0


@functools.lru_cache(maxsize=1024)
def parse_hello(arg: str) -> str | Bad:
    """RFC 5321 §4.1.1.1: "EHLO" SP ( Domain / address-literal ). Cached (a pure function of
    the argument; a client says the same name on each of its connections): the domain check
    was a quarter of a connection's EHLO (issue 15)."""
    name = arg.strip(" ")
    if not name or " " in name:
        return Bad(R.BAD_HELLO, "EHLO/HELO without a single domain argument")
    try:
        Address.parse(f"postmaster@{name}")
    except AddressError:
        return Bad(R.BAD_HELLO, "EHLO/HELO argument is not a domain or address literal")
    return name


@functools.lru_cache(maxsize=4096)
def _path(text: str, allow_null: bool) -> ReversePath:
    """parse_path, cached: a pure function of the text, and a client names the same sender and
    recipients message after message (issue 15: the path's parse was ~5 µs a command). A path
    that does not parse raises AddressError each time (lru_cache keeps no exception)."""
    return parse_path(text, utf8=True, allow_null=allow_null)


def _split_path(rest: str) -> tuple[str, str] | None:
    """Split "<path> params" at the ">" that closes the path (a quoted local part may hold ">")."""
    if not rest.startswith("<"):
        return None
    if '"' not in rest:
        end = rest.find(">")
        return None if end < 0 else (rest[: end + 1], rest[end + 1 :])
    quoted = False
    i = 1
    while i < len(rest):
        ch = rest[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return rest[: i + 1], rest[i + 1 :]
        i += 1
    return None


def _path_and_params(arg: str, keyword: str, bad: Reply) -> tuple[str, str] | Bad:
    if arg[: len(keyword)].upper() != keyword:
        return Bad(R.BAD_ARGUMENTS, f"expected {keyword}<path>")
    rest = arg[len(keyword) :]
    # Not RFC 5321 §4.1.1.2 syntax, but sent by real clients and accepted by Postfix:
    # one space between the colon and the path.
    if rest.startswith(" "):
        rest = rest[1:]
    split = _split_path(rest)
    if split is None:
        return Bad(bad, f"no <path> after {keyword}")
    path, params = split
    if params and not params.startswith(" "):
        return Bad(bad, "junk after the path")
    return path, params


def _params(text: str) -> dict[str, str | None] | Bad:
    """RFC 5321 §4.1.2 Mail-parameters = esmtp-param *(SP esmtp-param)."""
    out: dict[str, str | None] = {}
    if not text:
        return out
    for token in text.split(" "):
        if not token:
            continue  # tolerate runs of spaces
        key, sep, value = token.partition("=")
        if not _KEYWORD.fullmatch(key) or (sep and not _VALUE.fullmatch(value)):
            return Bad(R.BAD_ARGUMENTS, f"malformed parameter {key[:32]!r}")
        key = key.upper()
        if key in out:
            return Bad(R.BAD_ARGUMENTS, f"duplicate parameter {key}")
        out[key] = value if sep else None
    return out


def _check_mail_param(
    key: str, value: str | None, settings: ServerSettings, auth_offered: bool, tls_active: bool
) -> Bad | None:
    bad_value = Bad(R.BAD_ARGUMENTS, f"invalid value for {key}")
    if key == "SIZE":
        # RFC 1870 §6: SIZE=1*20DIGIT
        return None if value is not None and _DIGITS.fullmatch(value) else bad_value
    if key == "BODY":
        if value is not None and value.upper() == "BINARYMIME":
            # RFC 3030 §3: BINARYMIME is only valid when offered; we offer 8BITMIME only.
            return Bad(R.BAD_PARAMETER, "BODY=BINARYMIME is not offered")
        # RFC 6152 §2: BODY=7BIT / BODY=8BITMIME
        return None if value is not None and value.upper() in ("7BIT", "8BITMIME") else bad_value
    if key == "SMTPUTF8" and settings.smtputf8:
        # RFC 6531 §3.4: the SMTPUTF8 parameter has no value.
        return None if value is None else bad_value
    if key == "RET" and settings.dsn:
        # RFC 3461 §4.3: RET=FULL / RET=HDRS
        return None if value is not None and value.upper() in ("FULL", "HDRS") else bad_value
    if key == "ENVID" and settings.dsn:
        # RFC 3461 §4.4: ENVID=xtext, at most 100 characters.
        ok = value is not None and len(value) <= 100 and _XTEXT.fullmatch(value) is not None
        return None if ok else bad_value
    if key == "AUTH" and auth_offered:
        # RFC 4954 §5: a server offering AUTH accepts MAIL FROM's AUTH=xtext parameter.
        ok = value is not None and (value == "<>" or _XTEXT.fullmatch(value) is not None)
        return None if ok else bad_value
    if key == "REQUIRETLS" and settings.requiretls:
        if not tls_active:
            # RFC 8689 §4.1: the tag may only be given on a session that uses TLS; RFC 3463
            # X.7.10: encryption needed.
            return Bad(R.REQUIRETLS_NEEDS_TLS, "REQUIRETLS without TLS")
        # RFC 8689 §2: the REQUIRETLS parameter has no value.
        return None if value is None else bad_value
    # RFC 5321 §4.1.1.11: an unrecognized or unimplemented parameter gets 555.
    return Bad(R.BAD_PARAMETER, f"parameter {key} not offered")


def parse_mail(
    arg: str, settings: ServerSettings, *, auth_offered: bool, tls_active: bool = False
) -> MailFrom | Bad:
    """RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]."""
    split = _path_and_params(arg, "FROM:", R.BAD_SENDER)
    if isinstance(split, Bad):
        return split
    path_text, param_text = split
    try:
        path = _path(path_text, True)
    except AddressError as exc:
        return Bad(R.BAD_SENDER, f"sender: {exc}")
    params = _params(param_text)
    if isinstance(params, Bad):
        return params
    for key, value in params.items():
        refusal = _check_mail_param(key, value, settings, auth_offered, tls_active)
        if refusal is not None:
            return refusal
    smtputf8 = "SMTPUTF8" in params
    if path is not None and path.needs_smtputf8 and not smtputf8:
        # RFC 6531 §3.5: a non-ASCII address needs the SMTPUTF8 parameter.
        return Bad(R.NEED_SMTPUTF8, "non-ASCII sender without SMTPUTF8")
    size = int(params["SIZE"] or 0) if "SIZE" in params else None
    if size is not None and settings.max_message_size and size > settings.max_message_size:
        # RFC 1870 §6.1: a declared size over our maximum gets 552 at MAIL.
        return Bad(R.MESSAGE_TOO_BIG, f"declared SIZE={size} over the maximum")
    body_value = params.get("BODY")
    body: Literal["7BIT", "8BITMIME"] | None = None
    if body_value is not None:
        body = "7BIT" if body_value.upper() == "7BIT" else "8BITMIME"
    return MailFrom(
        path=path,
        params=params,
        size=size,
        body=body,
        smtputf8=smtputf8,
        requiretls="REQUIRETLS" in params,
    )


def _check_rcpt_param(
    key: str, value: str | None, settings: ServerSettings, smtputf8: bool
) -> Bad | None:
    bad_value = Bad(R.BAD_ARGUMENTS, f"invalid value for {key}")
    if key == "NOTIFY" and settings.dsn:
        # RFC 3461 §4.1: NOTIFY=NEVER / 1#( SUCCESS / FAILURE / DELAY )
        if value is None:
            return bad_value
        words = value.upper().split(",")
        if words == ["NEVER"]:
            return None
        ok = len(set(words)) == len(words) and all(word in _NOTIFY for word in words)
        return None if ok else bad_value
    if key == "ORCPT" and settings.dsn:
        # RFC 3461 §4.2: ORCPT=addr-type ";" xtext, at most 500 characters.
        if value is None or len(value) > 500:
            return bad_value
        addr_type, sep, text = value.partition(";")
        ok = bool(sep) and _ATOM.fullmatch(addr_type) is not None and bool(text)
        if ok and smtputf8 and addr_type.lower() == "utf-8" and not text.isascii():
            return None if _UNITEXT.fullmatch(text) else bad_value
        return None if ok and _XTEXT.fullmatch(text) else bad_value
    # RFC 5321 §4.1.1.11: an unrecognized or unimplemented parameter gets 555.
    return Bad(R.BAD_PARAMETER, f"parameter {key} not offered")


def rcpt_param_ok(key: str, value: str | None, settings: ServerSettings, *, smtputf8: bool) -> bool:
    """Whether RCPT TO would take `key`=`value` (upper-case key): a milter's SMFIR_ADDRCPT_PAR
    parameters are checked as a client's would be (RFC 3461 §4.1, §4.2)."""
    return _check_rcpt_param(key, value, settings, smtputf8) is None


def parse_rcpt(arg: str, settings: ServerSettings, *, smtputf8: bool) -> RcptTo | Bad:
    """RFC 5321 §4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
    Forward-path ) [SP Rcpt-parameters]."""
    split = _path_and_params(arg, "TO:", R.BAD_RECIPIENT)
    if isinstance(split, Bad):
        return split
    path_text, param_text = split
    address: Address | None
    if path_text.lower() == "<postmaster>":
        # RFC 5321 §4.5.1: <postmaster> without a domain is always valid.
        address = Address("postmaster", settings.hostname.lower())
    else:
        try:
            address = _path(path_text, False)
        except AddressError as exc:
            return Bad(R.BAD_RECIPIENT, f"recipient: {exc}")
    assert address is not None  # allow_null=False
    params = _params(param_text)
    if isinstance(params, Bad):
        return params
    for key, value in params.items():
        refusal = _check_rcpt_param(key, value, settings, smtputf8)
        if refusal is not None:
            return refusal
    if address.needs_smtputf8 and not smtputf8:
        # RFC 6531 §3.5: a non-ASCII address in a transaction begun without SMTPUTF8.
        return Bad(R.NEED_SMTPUTF8, "non-ASCII recipient without SMTPUTF8")
    return RcptTo(address=address, params=params)


def parse_bdat(arg: str) -> Bdat | None:
    """RFC 3030 §2: "BDAT" SP chunk-size [ SP end-marker ]; None when it does not parse."""
    words = arg.split(" ")
    if not 1 <= len(words) <= 2 or not _DIGITS.fullmatch(words[0]):
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return Bdat(size=int(words[0]), last=len(words) == 2)


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4954 §4); None when invalid."""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def parse_auth(arg: str, mechanisms: tuple[str, ...]) -> Auth | Bad:
    """RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]."""
    words = arg.split(" ")
    if not words[0] or len(words) > 2:
        return Bad(R.BAD_ARGUMENTS, "AUTH needs a mechanism and at most one initial response")
    mechanism = words[0].upper()
    if mechanism not in (mech.upper() for mech in mechanisms):
        return Bad(R.UNKNOWN_MECHANISM, f"mechanism {mechanism[:20]!r} not offered")
    if len(words) == 1:
        return Auth(mechanism, None)
    # RFC 4954 §4: "=" is an initial response of zero length.
    initial = b"" if words[1] == "=" else decode_base64(words[1].encode("utf-8"))
    if initial is None:
        return Bad(R.AUTH_BAD_BASE64, "initial response is not valid base64")
    return Auth(mechanism, initial)
