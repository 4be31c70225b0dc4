"""The replies the SMTP server core sends by itself, as values.

Every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status code (RFC 2034 §3); the
exceptions RFC 2034 §3 names are the greeting and the answers to HELO/EHLO, and 3xx
intermediate replies have no enhanced code at all (RFC 3463 §3.1: classes 2, 4, 5 only).
Reply text is generic; the detail goes to the ProtocolError event (DESIGN.md).

Must not import asyncio, socket, ssl, time or logging.
"""

from __future__ import annotations

from hato.model import Reply

# ---- positive answers the core gives itself, or by default on accept() ----
OK = Reply(250, "2.0.0", "Ok")
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
MESSAGE_OK = Reply(250, "2.0.0", "Ok")
# RFC 5321 §4.3.2: 354 after DATA; no enhanced code on a 3xx (RFC 3463 §3.1).
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
STARTTLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
BYE = Reply(221, "2.0.0", "Bye")
# RFC 5321 §3.5.3: 252 when we will not verify; discloses nothing.
VRFY_REPLY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
# RFC 5321 §7.3: EXPN is disabled here, to disclose no list members; a disabled EXPN "MUST
# return a 252 response" (not 502), which verifies nothing.
EXPN_REPLY = Reply(252, "2.5.0", "Cannot EXPN list, but will accept message and attempt delivery")
HELP_REPLY = Reply(214, "2.0.0", "Hato SMTP server: see RFC 5321")

# ---- syntax and sequence errors (counted as protocol errors) ----
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
# RFC 5321 §2.3.8: lines end only with CRLF; a bare CR or LF is the SMTP smuggling vector.
BARE_CR_LF = Reply(500, "5.5.2", "Bare CR or LF not allowed")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_ARGUMENTS = Reply(501, "5.5.4", "Invalid command arguments")
BAD_SYNTAX = Reply(501, "5.5.2", "Syntax error")
BAD_HELLO = Reply(501, "5.5.4", "Domain name or address literal required")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
NEED_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEED_AUTH = Reply(530, "5.7.0", "Authentication required")
# RFC 8689 §4.1 with RFC 3463/5248 X.7.10 "encryption needed": REQUIRETLS only over TLS.
REQUIRETLS_NEEDS_TLS = Reply(530, "5.7.10", "REQUIRETLS needs a TLS session")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Invalid base64 data")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line too long")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_REFUSED = Reply(421, "4.7.0", "Too many refused recipients, closing connection")
TOO_MANY_JUNK = Reply(421, "4.7.0", "Too many commands without mail, closing connection")

# ---- limits and message refusals ----
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_CR_LF_IN_DATA = Reply(550, "5.6.0", "Message refused: bare CR or LF not allowed")
REJECTING = Reply(503, "5.5.1", "No service here, only QUIT")


def chunk_received(size: int) -> Reply:
    """RFC 3030 §2: a non-LAST BDAT chunk is acknowledged by itself."""
    return Reply(250, "2.0.0", f"{size} octets received")


def with_text(reply: Reply, text: str | None) -> Reply:
    """`reply` with the caller's text, when given."""
    return reply if text is None else Reply(reply.code, reply.enhanced, text)


# ---- wire bytes (issue 15: a reply's to_bytes() and hashing were per command) ----

# The core's own replies by identity (a C-level int hash, not the dataclass's __hash__):
# `id()` is a safe key while _KEPT holds the objects.
_KEPT = tuple(r for r in list(globals().values()) if type(r) is Reply)
_FIXED = {id(r): r.to_bytes() for r in _KEPT}
_OTHERS: dict[Reply, bytes] = {}


def wire(reply: Reply) -> bytes:
    """`reply.to_bytes()`: precomputed for the replies above, cached for a bounded number of
    others (the session's refusals)."""
    data = _FIXED.get(id(reply))
    if data is None:
        data = _OTHERS.get(reply)
        if data is None:
            data = reply.to_bytes()
            if len(_OTHERS) < 512:
                _OTHERS[reply] = data
    return data


def wire_with_text(reply: Reply, text: str | None) -> bytes:
    """`with_text(reply, text).to_bytes()` without the intermediate Reply when the text is one
    line (a 250's "Ok: queued as ..."); the same checks and bytes (Reply.lines)."""
    if text is None:
        return wire(reply)
    if not text or "\n" in text or "\r" in text or text.endswith(" "):
        return with_text(reply, text).to_bytes()
    enhanced = reply.enhanced
    head = f"{reply.code} {enhanced} " if enhanced else f"{reply.code} "
    return (head + text + "\r\n").encode("utf-8")
