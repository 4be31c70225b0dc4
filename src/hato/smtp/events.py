"""Events the sans-IO SMTP server core hands to the session, and its settings.

Must not import asyncio, socket, ssl, time or logging (DESIGN.md: the sans-IO core).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from hato.model import Address, Reply, ReversePath
from hato.model.frozen import quick_init


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes with receive_data()
    PAUSED = "paused"  # a decision event is pending: answer it with accept() or reply()


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


# ---- events that wait for a decision (answer with conn.accept(...) or conn.reply(Reply)) ----


@dataclass(frozen=True, slots=True)
class Hello:
    kind: Literal["EHLO", "HELO"]
    domain: str  # the client's claimed name or address literal, as sent


@quick_init
@dataclass(frozen=True, slots=True)
class MailFrom:
    path: ReversePath  # None is the null reverse-path <>
    params: Mapping[str, str | None] = field(default_factory=dict)  # keys upper-case
    # parsed, validated parameters
    size: int | None = None  # RFC 1870 SIZE=
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None  # RFC 6152 BODY=
    smtputf8: bool = False  # RFC 6531 SMTPUTF8
    requiretls: bool = False  # RFC 8689 §2 REQUIRETLS (only ever accepted over TLS)


@quick_init
@dataclass(frozen=True, slots=True)
class RcptTo:
    address: Address  # "<postmaster>" without domain arrives as Address("postmaster", hostname)
    params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The whole body has arrived (DATA ended by CRLF.CRLF, or BDAT ... LAST).

    Answer with accept(text) only once the message is durable (DESIGN.md: 250 means durable).
    """

    size: int  # octets of message content received (after dot-unstuffing)


@dataclass(frozen=True, slots=True)
class StartTLSRequest:
    """RFC 3207. accept() answers 220 and discards every byte pipelined after the command;
    the session must then run the TLS handshake and call conn.tls_established()."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 4954 AUTH. Answer with conn.auth_challenge(bytes) for a 334 continuation,
    accept() for 235 (authenticated), or reply(Reply) (e.g. 535 5.7.8)."""

    mechanism: str  # upper-case
    initial: bytes | None  # decoded initial response; None if absent, b"" for "="


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's answer to a 334 challenge, base64-decoded. Answer like AuthRequest."""

    data: bytes


# ---- informational events (the core has already answered, or nothing needs answering) ----


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA accepted with 354, or the first BDAT chunk of a message began."""

    bdat: bool


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message content: dot-unstuffed for DATA, raw for BDAT; never includes the terminator."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """The message was refused by the core itself (too big, bare CR/LF, line too long,
    RSET during BDAT...): `reply` has been sent; throw the spooled body away."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionReset:
    """RSET, or a new EHLO/HELO, or TLS started: the mail transaction is gone."""


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client cancelled AUTH with "*" (RFC 4954 §4); 501 has been sent."""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A syntax or sequence error the core answered itself (for the log and error counting)."""

    reply: Reply
    detail: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The core has sent its last reply (221 to QUIT, 421 after too many errors, a bare CR/LF
    refusal, ...). Flush data_to_send() and close the transport; feed nothing more."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The client closed its side (EOF) without QUIT. Nothing was sent; a message in
    progress is gone (throw its spooled body away). Close the transport; feed nothing more."""


Event = (
    Hello
    | MailFrom
    | RcptTo
    | MessageEnd
    | StartTLSRequest
    | AuthRequest
    | AuthResponse
    | DataStart
    | BodyChunk
    | MessageAborted
    | TransactionReset
    | AuthCancelled
    | ProtocolError
    | CloseConnection
    | ConnectionLost
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What one listener's core enforces and advertises."""

    hostname: str
    max_message_size: int = 50 * 1024 * 1024  # RFC 1870 SIZE; 0 = no limit
    max_recipients: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be accepted
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4, including CRLF
    max_text_line: int = 1000  # RFC 5321 §4.5.3.1.6, including CRLF
    max_auth_line: int = 12288  # RFC 4954 §4
    max_bad_commands: int = 20  # errors (refused MAIL, messages too), none since a message, 421
    max_refused_recipients: int = 100  # refused RCPTs, none since a message, before 421
    max_junk_commands: int = 100  # NOOP, RSET, VRFY, ..., none since a message, before 421
    offer_starttls: bool = False  # advertise STARTTLS (only while not yet on TLS)
    auth_mechanisms: tuple[str, ...] = ()  # advertised after TLS (or always if auth_over_plain)
    auth_over_plain: bool = False  # allow AUTH without TLS (never for a real listener)
    require_auth: bool = False  # MAIL before AUTH gets 530 5.7.0 (RFC 4954 §6)
    require_tls: bool = False  # MAIL/AUTH before STARTTLS gets 530 5.7.0 (RFC 3207 §4)
    chunking: bool = True  # RFC 3030 CHUNKING/BDAT
    smtputf8: bool = True  # RFC 6531
    dsn: bool = False  # RFC 3461 (advertised once outbound DSN exists)
    requiretls: bool = True  # RFC 8689: advertised (and MAIL's parameter taken) only over TLS
