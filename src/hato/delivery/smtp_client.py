"""The SMTP/LMTP client over asyncio: one connection to one host, one or more transactions.

Theory of operation: `ClientSession.open` connects, reads the greeting, says EHLO (LHLO),
starts TLS as `TlsMode` asks, says EHLO again and authenticates when asked; anything that goes
wrong there is a `DeliveryError` naming the stage, for the courier to decide (next MX, retry
without TLS, defer). `send` runs one transaction and never raises for a delivery problem: it
returns one `Outcome` per recipient (the peer's reply kept on it). `reset` before reusing the
connection: with PIPELINING the RSET waits to go out in one write with the next transaction's
commands, and a connection found dead by it is a `SendResult.stale` (nothing delivered). All
protocol knowledge is in the sans-IO core `hato.smtp.client`; this module only moves bytes and
keeps time: every network wait has a timeout (RFC 5321 §4.5.3.2).

Must not import hato.server, hato.queue, hato.config (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from hato.delivery.smtp_client_txn import (
    NEEDS_8BITMIME,
    BodySource,
    Broken,
    BytesBody,
    MailParams,
    MessageBody,
    RecipientSpec,
    SendResult,
    Stale,
    Timeouts,
    Transaction,
    body_from_message,
)
from hato.model import PermFailed, Reply, ReversePath, TempFailed
from hato.smtp.client import Answer, ClientConnection, ClientState, Expect, RemoteProtocolError
from hato.smtp.client_commands import choose_mechanism
from hato.smtp.client_ehlo import Capabilities

__all__ = [
    "BodySource",
    "BytesBody",
    "Capabilities",
    "ClientSession",
    "ConnectOptions",
    "DeliveryError",
    "MailParams",
    "MessageBody",
    "RecipientSpec",
    "SendResult",
    "TlsInfo",
    "TlsMode",
    "body_from_message",
]

CHUNK_SIZE = 64 * 1024
READ_SIZE = 64 * 1024

# Replies we make up ourselves when the peer gave none (RFC 3463 codes).
CONNECT_FAILED = Reply(421, "4.4.1", "Connection refused or timed out")
DROPPED = Reply(421, "4.4.2", "Connection dropped")
TIMED_OUT = Reply(421, "4.4.2", "Connection timed out waiting for the server")
PROTOCOL_ERROR = Reply(451, "4.5.0", "Protocol error from the server")
NOT_USABLE = Reply(421, "4.4.2", "Connection not usable")
TLS_FAILED = Reply(421, "4.7.5", "TLS handshake failed")
TLS_NOT_OFFERED = Reply(421, "4.7.10", "Server does not offer STARTTLS")
TLS_PEER_REFUSED = Reply(421, "4.7.5", "Server certificate does not match the TLS policy")
AUTH_NEEDS_TLS = Reply(421, "4.7.10", "Refusing to authenticate without TLS")
AUTH_NO_MECHANISM = Reply(451, "4.7.4", "Server offers no supported AUTH mechanism")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Address needs SMTPUTF8 and the server lacks it")
NEEDS_REQUIRETLS = Reply(550, "5.7.30", "REQUIRETLS support required")
TOO_BIG = Reply(552, "5.3.4", "Message too big for the server")

Stage = Literal["connect", "greeting", "hello", "tls", "auth"]


class TlsMode(enum.Enum):
    NONE = "none"  # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # RFC 7435: STARTTLS when offered
    REQUIRED = "required"  # STARTTLS must be offered and succeed
    IMPLICIT = "implicit"  # RFC 8314 §3: TLS from the first byte (port 465)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    host: str  # IP address to connect to (the courier resolves names)
    port: int
    helo_name: str  # our hostname for EHLO/LHLO
    server_name: str = ""  # the peer's name for TLS SNI and certificate checks
    tls_mode: TlsMode = TlsMode.OPPORTUNISTIC
    ssl_context: ssl.SSLContext | None = None  # None: unauthenticated opportunistic TLS
    # Called with the leaf certificate (DER) after the handshake (DANE-EE); False aborts.
    verify_peer: Callable[[bytes], bool] | None = None
    auth: tuple[str, str] | None = None  # (user, password) for a smarthost; only over TLS
    lmtp: bool = False
    connect_timeout: float = 30.0
    # RFC 5321 §4.5.3.2: greeting 5 min, MAIL 5, RCPT 5, DATA initiation 2, data block 3,
    # final "." 10 min; §4.5.3.2 has no figure for EHLO/STARTTLS/AUTH/RSET: 5 min.
    greeting_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_block_timeout: float = 180.0
    data_end_timeout: float = 600.0
    command_timeout: float = 300.0
    quit_timeout: float = 10.0  # QUIT is a courtesy: don't wait long
    source_address: str | None = None


class DeliveryError(Exception):
    """A connection-level failure: nothing was delivered on this connection."""

    def __init__(
        self, stage: Stage, reply: Reply, *, permanent: bool = False, tls_policy: bool = False
    ) -> None:
        super().__init__(f"{stage}: {reply}")
        self.stage = stage
        self.reply = reply
        self.permanent = permanent
        self.tls_policy = tls_policy  # refused because of the TLS policy (kept on the row)


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    cipher: str
    peer_cert_der: bytes | None
    verified: bool  # the context verified the chain, or verify_peer accepted the certificate


class ClientSession:
    """One connection to one SMTP/LMTP server. See the module docstring."""

    def __init__(
        self,
        options: ConnectOptions,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: ClientConnection,
    ) -> None:
        self.options = options
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self._broken = False
        self._closed = False
        self.tls: TlsInfo | None = None
        self._stage: Stage = "greeting"  # where open() is, for a DeliveryError
        self._rset_due = False  # reset() asked for an RSET that goes out with the next MAIL

    @property
    def capabilities(self) -> Capabilities:
        return self._conn.capabilities

    @property
    def usable(self) -> bool:
        """Still open, and between transactions with no reply owed."""
        return (
            not self._broken
            and not self._closed
            and self._conn.state is ClientState.READY
            and self._conn.waiting == 0
        )

    # ---- opening ----
    @classmethod
    async def open(cls, options: ConnectOptions) -> ClientSession:
        implicit = options.tls_mode is TlsMode.IMPLICIT
        context = _context(options) if implicit else None
        try:
            async with asyncio.timeout(options.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    options.host,
                    options.port,
                    ssl=context,
                    server_hostname=(options.server_name or options.host) if implicit else None,
                    local_addr=(options.source_address, 0) if options.source_address else None,
                    limit=2 * READ_SIZE,
                )
        except ssl.SSLError as exc:
            reply = tls_failure(exc)
            raise DeliveryError("tls", reply, tls_policy=_is_verify_error(exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise DeliveryError("connect", CONNECT_FAILED) from exc
        session = cls(options, reader, writer, ClientConnection(lmtp=options.lmtp))
        try:
            if implicit:
                session._tls_done(context)
            await session._setup()
        except Broken as exc:
            await session._abort()
            raise DeliveryError(session._stage, exc.reply) from exc
        except DeliveryError:
            await session._abort()
            raise
        return session

    async def _setup(self) -> None:
        greeting = await self._answer(self.options.greeting_timeout)
        if greeting.reply.code != 220:
            # RFC 5321 §3.1: a 554 (or 421) banner: say QUIT and go.
            await self.close()
            raise DeliveryError("greeting", greeting.reply, permanent=greeting.reply.is_permanent)
        await self._hello()
        mode = self.options.tls_mode
        if mode in (TlsMode.OPPORTUNISTIC, TlsMode.REQUIRED) and not self._conn.tls_active:
            await self._starttls(required=mode is TlsMode.REQUIRED)
        if self.options.auth is not None:
            await self._authenticate(*self.options.auth)

    async def _hello(self) -> None:
        options = self.options
        self._stage = "hello"
        await self._write(self._conn.hello(options.helo_name), options.command_timeout)
        answer = await self._answer(options.command_timeout)
        if not answer.reply.is_positive and not options.lmtp and answer.reply.code != 421:
            # RFC 5321 §4.1.4 / §3.2: a server that refuses EHLO may still take HELO.
            await self._write(self._conn.helo(options.helo_name), options.command_timeout)
            answer = await self._answer(options.command_timeout)
        if not answer.reply.is_positive:
            raise DeliveryError("hello", answer.reply, permanent=answer.reply.is_permanent)

    async def _starttls(self, *, required: bool) -> None:
        if not self._conn.capabilities.starttls:
            if required:
                raise DeliveryError("tls", TLS_NOT_OFFERED, tls_policy=True)
            return
        self._stage = "tls"
        timeout = self.options.command_timeout
        await self._write(self._conn.starttls(), timeout)
        answer = await self._answer(timeout)
        if answer.reply.code != 220:
            # RFC 3207 §4: no TLS now; opportunistic mode goes on in clear text.
            if required or answer.reply.code == 421:
                raise DeliveryError("tls", answer.reply, tls_policy=required)
            return
        # RFC 3207 §4.2 (CVE-2011-0411): clear-text bytes after the 220 are never read as
        # replies under TLS; the core checks its own buffer, this checks the stream's.
        if getattr(self._reader, "_buffer", b""):
            raise DeliveryError("tls", PROTOCOL_ERROR)
        context = _context(self.options)
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await self._writer.start_tls(
                    context, server_hostname=self.options.server_name or self.options.host
                )
            self._conn.tls_established()
        except ssl.SSLError as exc:
            reply = tls_failure(exc)
            raise DeliveryError("tls", reply, tls_policy=_is_verify_error(exc)) from exc
        except RemoteProtocolError as exc:
            raise DeliveryError("tls", PROTOCOL_ERROR) from exc
        except (OSError, TimeoutError) as exc:
            raise DeliveryError("tls", tls_failure(exc)) from exc
        self._tls_done(context)
        await self._hello()

    def _tls_done(self, context: ssl.SSLContext | None) -> None:
        ssl_object = self._writer.get_extra_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            raise DeliveryError("tls", TLS_FAILED)
        der = ssl_object.getpeercert(binary_form=True)
        verified = context is not None and context.verify_mode == ssl.CERT_REQUIRED
        if self.options.verify_peer is not None:
            # RFC 7672 §3.1: a DANE-EE match authenticates the server by itself.
            if der is None or not self.options.verify_peer(der):
                raise DeliveryError("tls", TLS_PEER_REFUSED, tls_policy=True)
            verified = True
        cipher = ssl_object.cipher()
        self.tls = TlsInfo(ssl_object.version() or "", cipher[0] if cipher else "", der, verified)
        self._conn.tls_active = True

    async def _authenticate(self, user: str, password: str) -> None:
        if not self._conn.tls_active:
            # RFC 4954 §4 / RFC 8314: never send a password in clear text.
            raise DeliveryError("auth", AUTH_NEEDS_TLS, tls_policy=True)
        self._stage = "auth"
        mechanism = choose_mechanism(self._conn.capabilities.auth)
        if mechanism is None:
            raise DeliveryError("auth", AUTH_NO_MECHANISM)
        timeout = self.options.command_timeout
        await self._write(self._conn.auth(mechanism, user, password), timeout)
        answer = await self._answer(timeout)
        while answer.reply.code == 334:
            await self._write(self._conn.auth_response(), timeout)
            answer = await self._answer(timeout)
        if answer.reply.code != 235:
            raise DeliveryError("auth", answer.reply, permanent=answer.reply.is_permanent)

    # ---- one transaction ----
    async def send(
        self,
        mail_from: ReversePath,
        recipients: Sequence[RecipientSpec],
        body: BodySource,
        *,
        mail_params: MailParams | None = None,
    ) -> SendResult:
        """One mail transaction; one outcome per recipient (never raises for the peer)."""
        params = mail_params or MailParams()
        if not self.usable:
            return SendResult(tuple(TempFailed(NOT_USABLE) for _ in recipients))
        refusal = self._refusal(mail_from, recipients, body, params)
        if refusal is not None:
            return SendResult(tuple(PermFailed(refusal) for _ in recipients))
        if not recipients:
            return SendResult(())
        o = self.options
        timeouts = Timeouts(
            o.mail_timeout,
            o.rcpt_timeout,
            o.data_init_timeout,
            o.data_block_timeout,
            o.data_end_timeout,
            o.command_timeout,
        )
        txn = Transaction(
            self._conn,
            recipients,
            body,
            write=self._write,
            read=self._answer,
            timeouts=timeouts,
            rset=self._rset_due,
        )
        self._rset_due = False
        try:
            await txn.run(mail_from, params)
        except Broken as exc:
            await self._abort()
            txn.fail_open(exc.reply)
            if isinstance(exc, Stale):
                return dataclasses.replace(txn.result(), stale=True)
        return txn.result()

    def _refusal(
        self,
        mail_from: ReversePath,
        recipients: Sequence[RecipientSpec],
        body: BodySource,
        params: MailParams,
    ) -> Reply | None:
        caps = self._conn.capabilities
        if body.eight_bit and not caps.eight_bit_mime:
            # RFC 6152 §3: 8-bit data only to a server that offers 8BITMIME; we don't downgrade.
            return NEEDS_8BITMIME
        addresses = [r.address for r in recipients]
        if mail_from is not None:
            addresses.append(mail_from)
        utf8 = params.smtputf8 or any(a.needs_smtputf8 for a in addresses)
        if utf8 and not caps.smtputf8:
            # RFC 6531 §3.2: no SMTPUTF8 at the server: don't send (a UTF-8 address has no
            # downgrade; UTF-8 header fields were downgraded before, when they could be).
            return NEEDS_SMTPUTF8
        if params.requiretls and not (self._conn.tls_active and caps.requiretls):
            # RFC 8689 §4.2.1: not to a server without TLS and REQUIRETLS.
            return NEEDS_REQUIRETLS
        if caps.size and body.size > caps.size:
            # RFC 1870 §6.1: the server told us its maximum; don't send more.
            return TOO_BIG
        return None

    async def reset(self) -> None:
        """RSET (RFC 5321 §4.1.1.5), so the connection can carry another transaction. With
        PIPELINING it goes out with the next transaction's commands (RFC 2920 §3.1), saving a
        round trip per message; a dead connection then shows in that `send` as `stale`."""
        if self._broken or self._closed:
            return
        if self._conn.capabilities.pipelining:
            self._rset_due = True
            return
        try:
            await self._write(self._conn.rset(), self.options.command_timeout)
            await self._answer(self.options.command_timeout)
        except Broken:
            await self._abort()

    async def close(self) -> None:
        """QUIT (waiting a little for the 221), then close the connection."""
        if self._closed:
            return
        if not self._broken and self._conn.state in (
            ClientState.READY,
            ClientState.CONNECTED,
            ClientState.REJECTED,
            ClientState.GREETING,
        ):
            with contextlib.suppress(Broken):
                await self._write(self._conn.quit(), self.options.quit_timeout)
                await self._answer(self.options.quit_timeout)
        await self._abort()

    async def _abort(self) -> None:
        self._broken = True
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(self.options.quit_timeout):
                await self._writer.wait_closed()

    # ---- bytes ----
    async def _write(self, data: bytes, seconds: float) -> None:
        if not data:
            return
        try:
            self._writer.write(data)
            async with asyncio.timeout(seconds):
                await self._writer.drain()
        except TimeoutError as exc:
            raise Broken(TIMED_OUT) from exc
        except OSError as exc:
            raise Broken(DROPPED) from exc

    async def _answer(self, seconds: float) -> Answer:
        """The next reply; Broken on timeout, EOF, a malformed reply, or a 421."""
        try:
            async with asyncio.timeout(seconds):
                while (answer := self._conn.next_answer()) is None:
                    data = await self._reader.read(READ_SIZE)
                    if not data:
                        raise Broken(DROPPED)
                    self._conn.receive_data(data)
        except TimeoutError as exc:
            raise Broken(TIMED_OUT) from exc
        except OSError as exc:
            raise Broken(DROPPED) from exc
        except RemoteProtocolError as exc:
            raise Broken(PROTOCOL_ERROR) from exc
        if answer.reply.code == 421 and answer.expect is not Expect.QUIT:
            # RFC 5321 §3.8: the server is closing; every open recipient is deferred.
            raise Broken(answer.reply)
        return answer


def _context(options: ConnectOptions) -> ssl.SSLContext:
    if options.ssl_context is not None:
        return options.ssl_context
    context = ssl.create_default_context()
    # RFC 7435 §1.3 / RFC 3207 §4.1: opportunistic TLS encrypts without authenticating.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # RFC 8996: no TLS 1.0 or 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_failure(exc: BaseException) -> Reply:
    """TLS_FAILED with the reason (issue 13: "TLS handshake failed" alone left an admin
    guessing): which certificate check failed (OpenSSL's verify message, e.g. "unable to get
    local issuer certificate" or a host name mismatch), else the TLS alert or socket error.
    The reply is ours, kept on the queue row and in DSNs; RFC 3463 §3.8: X.7.5 crypto failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"certificate verify failed: {exc.verify_message or exc.reason or exc}"
    elif isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.strerror or exc)
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    else:
        reason = str(getattr(exc, "strerror", None) or exc) or type(exc).__name__
    text = " ".join(reason.split())[:200]  # one line: it goes into a reply and a log field
    return Reply(TLS_FAILED.code, TLS_FAILED.enhanced, f"{TLS_FAILED.text}: {text}")


def _is_verify_error(exc: ssl.SSLError) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError)
