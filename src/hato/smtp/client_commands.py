"""Building the client's command lines: MAIL/RCPT with their parameters, xtext, SASL steps.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from hato.model import Address, ReversePath, format_path

_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class CommandError(ValueError):
    """A parameter we were asked to send is not valid (our caller's mistake, not the peer's)."""


def xtext(text: str) -> str:
    """RFC 3461 §4: xtext; "+", "=", and octets outside 33..126 become "+HH" (upper-case hex).

    Non-ASCII text is encoded as UTF-8 first, octet by octet.
    """
    out: list[str] = []
    for octet in text.encode("utf-8"):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):  # not "+" nor "="
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def unitext(text: str) -> str:
    """RFC 6533 §3 utf-8-addr-unitext: UTF-8 kept; "+", "\\", "=", controls, space as \\x{HEX}."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if code <= 0x20 or code == 0x7F or ch in "+\\=":
            out.append(f"\\x{{{code:X}}}")
        else:
            out.append(ch)
    return "".join(out)


def orcpt_value(orcpt: str, *, smtputf8: bool) -> str:
    """ORCPT=addr-type ";" xtext (RFC 3461 §4.2). `orcpt` is "type;address" or a bare address
    (taken as rfc822). A non-ASCII address uses the "utf-8" type of RFC 6533 §3."""
    addr_type, sep, address = orcpt.partition(";")
    if not sep:
        addr_type, address = "rfc822", orcpt
    if not address:
        raise CommandError("ORCPT without an address")
    if address.isascii() and addr_type.lower() != "utf-8":
        return f"{addr_type};{xtext(address)}"
    # RFC 6533 §3: utf-8-addr-unitext only when the transaction uses SMTPUTF8, else xtext form.
    return f"utf-8;{unitext(address) if smtputf8 else xtext(unitext(address))}"


def notify_value(notify: str) -> str:
    """RFC 3461 §4.1: NOTIFY="NEVER" / 1#("SUCCESS" / "FAILURE" / "DELAY")."""
    words = [w.strip().upper() for w in notify.split(",")]
    if words == ["NEVER"]:
        return "NEVER"
    if not words or len(set(words)) != len(words) or not set(words) <= _NOTIFY_WORDS:
        raise CommandError(f"invalid NOTIFY value {notify!r}")
    return ",".join(words)


def _line(text: str) -> bytes:
    if "\r" in text or "\n" in text:
        # RFC 5321 §2.3.8: a command is one CRLF-terminated line; never let CR/LF in.
        raise CommandError("CR or LF inside a command")
    return text.encode("utf-8") + b"\r\n"


def hello_command(verb: str, name: str) -> bytes:
    """EHLO / HELO / LHLO (RFC 5321 §4.1.1.1, RFC 2033 §4.1)."""
    return _line(f"{verb} {name}")


def mail_command(
    sender: ReversePath,
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
    ret: str | None = None,
    envid: str | None = None,
    requiretls: bool = False,
) -> bytes:
    """RFC 5321 §4.1.1.2 MAIL FROM:<path> with the parameters we were asked for."""
    params: list[str] = []
    if size is not None:
        params.append(f"SIZE={size}")  # RFC 1870 §6
    if body is not None:
        params.append(f"BODY={body}")  # RFC 6152 §2
    if smtputf8:
        params.append("SMTPUTF8")  # RFC 6531 §3.4
    if ret is not None:
        # RFC 3461 §4.3: RET=FULL / HDRS
        if ret.upper() not in ("FULL", "HDRS"):
            raise CommandError(f"invalid RET value {ret!r}")
        params.append(f"RET={ret.upper()}")
    if envid is not None:
        encoded = xtext(envid)
        # RFC 3461 §4.4: ENVID is at most 100 characters (after xtext encoding).
        if len(encoded) > 100:
            raise CommandError("ENVID longer than 100 characters")
        params.append(f"ENVID={encoded}")
    if requiretls:
        params.append("REQUIRETLS")  # RFC 8689 §4.1
    return _line(" ".join([f"MAIL FROM:{format_path(sender)}", *params]))


def rcpt_command(
    recipient: Address,
    *,
    notify: str | None = None,
    orcpt: str | None = None,
    smtputf8: bool = False,
) -> bytes:
    """RFC 5321 §4.1.1.3 RCPT TO:<path>, with RFC 3461 §4.1/§4.2 NOTIFY and ORCPT."""
    params: list[str] = []
    if notify is not None:
        params.append(f"NOTIFY={notify_value(notify)}")
    if orcpt is not None:
        value = orcpt_value(orcpt, smtputf8=smtputf8)
        # RFC 3461 §4.2: ORCPT's value is at most 500 characters.
        if len(value) > 500:
            raise CommandError("ORCPT longer than 500 characters")
        params.append(f"ORCPT={value}")
    return _line(" ".join([f"RCPT TO:{format_path(recipient)}", *params]))


def simple_command(verb: str) -> bytes:
    """DATA, RSET, NOOP, QUIT, STARTTLS: a verb alone."""
    return _line(verb)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_challenge(text: str) -> bytes | None:
    """The base64 payload of a 334 reply (RFC 4954 §4), None when it is not base64."""
    try:
        return base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


class SaslClient:
    """Client side of SASL PLAIN (RFC 4616) and LOGIN for SMTP AUTH (RFC 4954).

    `start()` gives the AUTH command; then, for each 334 challenge, `respond(challenge)` gives
    the response line. The password never appears in anything but those two results.
    """

    __slots__ = ("_password", "_step", "_user", "mechanism")

    def __init__(self, mechanism: str, user: str, password: str) -> None:
        if mechanism not in SASL_MECHANISMS:
            raise CommandError(f"unsupported SASL mechanism {mechanism}")
        self.mechanism = mechanism
        self._user = user
        self._password = password
        self._step = 0

    def start(self) -> bytes:
        if self.mechanism == "PLAIN":
            # RFC 4954 §4: send the initial response with the command (saves a round trip);
            # RFC 4616 §2: message = [authzid] NUL authcid NUL passwd.
            message = b"\0" + self._user.encode("utf-8") + b"\0" + self._password.encode("utf-8")
            self._step = 1
            return _line(f"AUTH PLAIN {b64(message) if message else '='}")
        return _line("AUTH LOGIN")

    def respond(self, challenge: bytes) -> bytes:
        """The answer to one 334 challenge; "*" (cancel, RFC 4954 §4) when there is none."""
        self._step += 1
        if self.mechanism == "PLAIN":
            return _line("*")  # the initial response was all PLAIN has to say
        # LOGIN: the server asks "Username:" then "Password:" (draft-murchison-sasl-login).
        if self._step == 1:
            return _line(b64(self._user.encode("utf-8")))
        if self._step == 2:
            return _line(b64(self._password.encode("utf-8")))
        return _line("*")


SASL_MECHANISMS = ("PLAIN", "LOGIN")


def choose_mechanism(offered: Sequence[str]) -> str | None:
    """Our preferred mechanism among those offered (PLAIN saves a round trip)."""
    for mechanism in SASL_MECHANISMS:
        if mechanism in offered:
            return mechanism
    return None
