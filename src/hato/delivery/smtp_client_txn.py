"""One mail transaction over an open client connection, and the values it takes and gives.

Theory of operation: `Transaction.run` writes MAIL, the RCPTs and DATA in one write when the
server offers PIPELINING (RFC 2920), else one command per round trip; on a reused connection the
RSET that checks it is still there goes first in that write (`rset`). Then the body, dot-stuffed
after DATA (the small writes of a message gathered into 64 KiB ones, its end included) or in BDAT
chunks when the server offers CHUNKING (RFC 3030). Each recipient's outcome
is set once: by a refused RCPT, by a refused MAIL/DATA/chunk, or by the reply to the end of the
body (one per recipient under LMTP, RFC 2033 §4.2). `Broken` (timeout, drop, protocol error, 421)
leaves every still-open recipient to the caller, which defers them all; `Stale` (a Broken
before the RSET was answered well) tells it that nothing of the message reached the server.

Must not import hato.server, hato.queue, hato.config (DESIGN.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hato.model import (
    Address,
    Delivered,
    Outcome,
    PermFailed,
    QueuedMessage,
    Reply,
    ReversePath,
    TempFailed,
)
from hato.smtp.client import Answer, ClientConnection, ClientState, Expect

CHUNK_SIZE = 64 * 1024
NEEDS_8BITMIME = Reply(554, "5.6.3", "Message has 8-bit data and the server lacks 8BITMIME")
BODY_READ_ERROR = Reply(451, "4.3.0", "Local error reading the message")
NO_STATUS = Reply(451, "4.4.0", "No status for this recipient")


class Broken(Exception):
    """The connection cannot go on; `reply` is why (for every recipient still open)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Stale(Broken):
    """A reused connection failed before its RSET was answered with 250 (dropped while idle, a
    421, a refusal): the body was never sent and the connection is dropped, so nothing of the
    message was delivered and another connection may carry it."""


def outcome_of(reply: Reply) -> Outcome:
    if reply.is_positive:
        return Delivered(str(reply))
    return TempFailed(reply) if reply.is_transient else PermFailed(reply)


@dataclass(frozen=True, slots=True)
class RecipientSpec:
    address: Address
    notify: str | None = None  # RFC 3461 NOTIFY value, e.g. "SUCCESS,FAILURE" or "NEVER"
    orcpt: str | None = None  # RFC 3461 ORCPT: "rfc822;addr" (unencoded) or a bare address


@dataclass(frozen=True, slots=True)
class MailParams:
    envid: str | None = None  # RFC 3461 ENVID (unencoded)
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    requiretls: bool = False  # RFC 8689
    smtputf8: bool = False  # RFC 6531 §3.4: UTF-8 in the header section (addresses: implied)


class BodySource(Protocol):
    """A message body that streams: `size` octets; `eight_bit` None = not known (scanned)."""

    @property
    def size(self) -> int: ...

    @property
    def eight_bit(self) -> bool | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class BytesBody:
    """A body held in memory."""

    data: bytes
    eight_bit: bool | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), CHUNK_SIZE):
            yield self.data[start : start + CHUNK_SIZE]


@dataclass(frozen=True, slots=True)
class MessageBody:
    """A queued message: the stored prefix, then the inline body or the body file."""

    prefix: bytes
    inline: bytes | None
    path: str
    body_size: int
    eight_bit: bool | None = None

    @property
    def size(self) -> int:
        return len(self.prefix) + self.body_size

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.prefix:
            yield self.prefix
        if self.inline is not None:
            async for chunk in BytesBody(self.inline).chunks():
                yield chunk
            return
        handle = await asyncio.to_thread(open, self.path, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
                yield chunk
        finally:
            handle.close()


def body_from_message(message: QueuedMessage) -> MessageBody:
    """The body of a queued message, read in 64 KiB chunks (DESIGN.md: bodies stream)."""
    size = len(message.body) if message.body is not None else message.size
    return MessageBody(message.prefix, message.body, message.body_path, size)


@dataclass(frozen=True, slots=True)
class SendResult:
    outcomes: tuple[Outcome, ...]  # one per recipient, in the order given
    reply: Reply | None = None  # the reply to the end of the body (SMTP), if it came
    stale: bool = False  # Stale: nothing was delivered; a new connection may try again


@dataclass(frozen=True, slots=True)
class Timeouts:
    """RFC 5321 §4.5.3.2 waits, in seconds."""

    mail: float
    rcpt: float
    data_init: float
    data_block: float
    data_end: float
    command: float


Write = Callable[[bytes, float], Awaitable[None]]
Read = Callable[[float], Awaitable[Answer]]


class Transaction:
    """One MAIL..end-of-body exchange. See the module docstring."""

    def __init__(
        self,
        conn: ClientConnection,
        recipients: Sequence[RecipientSpec],
        body: BodySource,
        *,
        write: Write,
        read: Read,
        timeouts: Timeouts,
        rset: bool = False,
    ) -> None:
        """`rset`: the connection was reused; RSET first (RFC 5321 §4.1.1.5), pipelined."""
        self._conn = conn
        self._reused = rset
        self._recipients = recipients
        self._body = body
        self._write = write
        self._read = read
        self._t = timeouts
        self._outcomes: list[Outcome | None] = [None] * len(recipients)
        self._final: Reply | None = None
        self._accepted: list[int] = []
        # unknown 8-bitness and no 8BITMIME: scan while sending, stop at the first 8-bit octet
        self._scan = body.eight_bit is None and not conn.capabilities.eight_bit_mime

    def result(self) -> SendResult:
        # Every path sets an outcome per recipient; NO_STATUS is a guard, never expected.
        return SendResult(tuple(o or TempFailed(NO_STATUS) for o in self._outcomes), self._final)

    def fail_open(self, reply: Reply) -> None:
        """Every recipient without an outcome yet gets TempFailed(reply)."""
        self._outcomes = [o or TempFailed(reply) for o in self._outcomes]

    def _fail(self, indexes: Sequence[int], reply: Reply) -> None:
        for index in indexes:
            if self._outcomes[index] is None:
                self._outcomes[index] = outcome_of(reply)

    async def run(self, mail_from: ReversePath, params: MailParams) -> None:
        conn, caps = self._conn, self._conn.capabilities
        addresses = [r.address for r in self._recipients]
        utf8 = (
            params.smtputf8
            or any(a.needs_smtputf8 for a in addresses)
            or bool(mail_from and mail_from.needs_smtputf8)
        )
        self._utf8 = utf8
        reset = b""
        if self._reused:
            reset = conn.rset()
            if not caps.pipelining:
                await self._checked_rset(reset, b"")
                reset = b""
        mail = conn.mail(
            mail_from,
            size=self._body.size if caps.size is not None else None,
            # RFC 6152 §2: declare 8BITMIME unless the body is known to be 7-bit.
            body="8BITMIME" if caps.eight_bit_mime and self._body.eight_bit is not False else None,
            smtputf8=utf8,
            # RFC 3461 §4: DSN parameters only to a server that offers DSN.
            ret=params.ret if caps.dsn else None,
            envid=params.envid if caps.dsn else None,
            requiretls=params.requiretls,
        )
        everyone = range(len(self._recipients))
        if caps.pipelining:
            data_answer = await self._pipelined(reset, mail)
        else:
            await self._write(mail, self._t.mail)
            mail_reply = (await self._read(self._t.mail)).reply
            if not mail_reply.is_positive:
                self._fail(everyone, mail_reply)
                return
            for index in everyone:
                await self._write(self._rcpt(index), self._t.rcpt)
                self._on_rcpt(await self._read(self._t.rcpt))
            data_answer = None
            if self._accepted and not caps.chunking:
                await self._write(conn.data(), self._t.data_init)
                data_answer = await self._read(self._t.data_init)
        await self._body_phase(data_answer)

    def _rcpt(self, index: int) -> bytes:
        spec = self._recipients[index]
        dsn = self._conn.capabilities.dsn
        return self._conn.rcpt(
            spec.address,
            notify=spec.notify if dsn else None,
            orcpt=spec.orcpt if dsn else None,
            smtputf8=self._utf8,
        )

    async def _pipelined(self, reset: bytes, mail: bytes) -> Answer | None:
        # RFC 2920 §3.1: (RSET,) MAIL, the RCPTs and DATA (the last of the group) in one write.
        conn = self._conn
        rcpts = b"".join(self._rcpt(index) for index in range(len(self._recipients)))
        data = b"" if conn.capabilities.chunking else conn.data()
        if reset:
            await self._checked_rset(reset, mail + rcpts + data)
        else:
            await self._write(mail + rcpts + data, self._t.mail)
        mail_reply = (await self._read(self._t.mail)).reply
        for _ in self._recipients:
            self._on_rcpt(await self._read(self._t.rcpt))
        if not mail_reply.is_positive:
            self._accepted = []
            self._fail(range(len(self._recipients)), mail_reply)
        return await self._read(self._t.data_init) if data else None

    def _on_rcpt(self, answer: Answer) -> None:
        if answer.reply.is_positive:
            self._accepted.append(answer.index)
        else:
            self._outcomes[answer.index] = outcome_of(answer.reply)

    async def _body_phase(self, data_answer: Answer | None) -> None:
        conn = self._conn
        if not self._accepted:
            if data_answer is not None and data_answer.reply.code == 354:
                # RFC 2920 §3.1: a server that said 354 with no recipient gets an empty body.
                await self._write(conn.end_body(), self._t.data_block)
                while conn.waiting:
                    await self._read(self._t.data_end)
            if conn.state is ClientState.MAIL:
                await self._rset()
            return
        if conn.capabilities.chunking:
            await self._send_bdat()
            return
        assert data_answer is not None
        if data_answer.reply.code != 354:
            self._fail(self._accepted, data_answer.reply)
            return
        # Small pieces (the stored prefix, the body, the end) go out together: each write is a
        # system call here and a wake-up at the peer.
        gathered = b""
        try:
            async for chunk in self._body.chunks():
                gathered += conn.body(chunk)
                self._check_eight_bit()
                if len(gathered) >= CHUNK_SIZE:
                    await self._write(gathered, self._t.data_block)
                    gathered = b""
        except OSError as exc:
            raise Broken(BODY_READ_ERROR) from exc
        await self._write(gathered + conn.end_body(), self._t.data_block)
        await self._final_replies(None)

    def _check_eight_bit(self) -> None:
        framer = self._conn.body_framer
        if self._scan and framer is not None and framer.eight_bit:
            # RFC 6152 §3: no 8-bit octet to a server without 8BITMIME. The end of the body was
            # not sent, so dropping the connection delivers nothing.
            self._fail(self._accepted, NEEDS_8BITMIME)
            raise Broken(NEEDS_8BITMIME)

    async def _send_bdat(self) -> None:
        conn = self._conn
        # RFC 3030 §4.2: with PIPELINING the chunks need not wait for their replies.
        pipelined = conn.capabilities.pipelining
        previous: bytes | None = None
        try:
            async for chunk in self._body.chunks():
                if previous is not None:
                    data = conn.bdat(previous)
                    self._check_eight_bit()
                    await self._write(data, self._t.data_block)
                    if data and not pipelined:
                        answer = await self._read(self._t.data_block)
                        if not answer.reply.is_positive:
                            # RFC 3030 §2: after a refused chunk, send no more; RSET.
                            self._fail(self._accepted, answer.reply)
                            await self._rset()
                            return
                previous = chunk
        except OSError as exc:
            raise Broken(BODY_READ_ERROR) from exc
        data = conn.bdat(previous or b"", last=True)
        self._check_eight_bit()
        await self._write(data, self._t.data_block)
        failure: Reply | None = None
        while conn.waiting and conn.state is not ClientState.READY:
            answer = await self._read(self._t.data_end)
            if answer.expect is Expect.BDAT:
                if not answer.reply.is_positive and failure is None:
                    failure = answer.reply
                continue
            self._on_final(answer, failure)

    async def _final_replies(self, failure: Reply | None) -> None:
        while self._conn.waiting:
            self._on_final(await self._read(self._t.data_end), failure)

    def _on_final(self, answer: Answer, failure: Reply | None) -> None:
        reply = answer.reply if failure is None else failure
        if self._conn.lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            self._fail([answer.index], reply)
        else:
            self._final = answer.reply
            self._fail(self._accepted, reply)

    async def _rset(self) -> None:
        await self._write(self._conn.rset(), self._t.command)
        await self._read(self._t.command)

    async def _checked_rset(self, reset: bytes, more: bytes) -> None:
        """Write the RSET (and the commands pipelined after it); its reply must be a 250.
        Anything else is Stale (RFC 2920 §3.1: replies come in order, so no reply to what
        follows was read, and the body waits for a 354 that is never read either)."""
        try:
            await self._write(reset + more, self._t.command)
            answer = await self._read(self._t.command)
        except Stale:
            raise
        except Broken as exc:
            raise Stale(exc.reply) from exc
        if not answer.reply.is_positive:
            raise Stale(answer.reply)
