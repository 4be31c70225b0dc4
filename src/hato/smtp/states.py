"""The states of the SMTP server core and the one table of which verbs each state takes.

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

import enum

from hato.smtp.commands import Verb


class LocalProtocolError(Exception):
    """Our own misuse of the core (never raised for anything the peer sends)."""


class State(enum.Enum):
    INITIAL = "initial"  # greet() not called yet: nothing is parsed
    GREETED = "greeted"  # 220 sent (or TLS just started): EHLO/HELO expected
    REJECTING = "rejecting"  # 554 greeting, RFC 5321 §3.1: only QUIT is served
    READY = "ready"  # EHLO/HELO accepted, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading a DATA body
    BDAT = "bdat"  # inside a BDAT message (reading a chunk, or between chunks)
    AUTH = "auth"  # a 334 was sent: the next line is a SASL response
    TLS_HANDSHAKE = "tls-handshake"  # STARTTLS accepted: waiting for tls_established()
    CLOSED = "closed"

    __hash__ = object.__hash__  # identity hashing in C, as for commands.Verb


_ANYTIME = frozenset({Verb.NOOP, Verb.RSET, Verb.QUIT, Verb.VRFY, Verb.EXPN, Verb.HELP})
_HELLO = frozenset({Verb.EHLO, Verb.HELO})
_TRANSACTION = _ANYTIME | _HELLO | {Verb.RCPT, Verb.DATA, Verb.BDAT}

# The state table. A verb not listed for the current state is 503 5.5.1 (RFC 5321 §4.3.2);
# states that are not listed (DATA, AUTH, ...) read no commands at all.
# RFC 5321 §4.1.4: MAIL needs EHLO/HELO first, and is refused inside a transaction.
# RFC 4954 §4: no AUTH during a transaction. RFC 3030 §2: BDAT and DATA don't mix, and
# nothing but BDAT (or RSET/QUIT/NOOP...) between the chunks of one message.
ALLOWED: dict[State, frozenset[Verb]] = {
    State.GREETED: _ANYTIME | _HELLO,
    State.REJECTING: frozenset({Verb.QUIT}),
    State.READY: _ANYTIME | _HELLO | {Verb.MAIL, Verb.STARTTLS, Verb.AUTH},
    State.MAIL: _TRANSACTION,
    State.RCPT: _TRANSACTION,
    State.BDAT: _ANYTIME | {Verb.BDAT},
}
