"""The sans-IO SMTP protocol core: bytes in, events out; replies in, bytes out.

Must not import asyncio, socket, ssl, time or logging (DESIGN.md).
"""

from hato.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthCancelled,
    AuthRequest,
    AuthResponse,
    BodyChunk,
    CloseConnection,
    ConnectionLost,
    DataStart,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageEnd,
    ProtocolError,
    RcptTo,
    Sentinel,
    ServerSettings,
    StartTLSRequest,
    TransactionReset,
)
from hato.smtp.server import ServerConnection
from hato.smtp.states import LocalProtocolError, State

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCancelled",
    "AuthRequest",
    "AuthResponse",
    "BodyChunk",
    "CloseConnection",
    "ConnectionLost",
    "DataStart",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MessageAborted",
    "MessageEnd",
    "ProtocolError",
    "RcptTo",
    "Sentinel",
    "ServerConnection",
    "ServerSettings",
    "StartTLSRequest",
    "State",
    "TransactionReset",
]
