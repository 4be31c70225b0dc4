"""Loopback peers for the SMTP client tests: Hato's own server core behind a tiny asyncio
server (accepting everything), and a scripted peer that answers what each test says.

(No tests here; the test modules import these helpers.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from hato.smtp import (
    BodyChunk,
    CloseConnection,
    ConnectionLost,
    Hello,
    MailFrom,
    MessageEnd,
    RcptTo,
    Sentinel,
    ServerConnection,
    ServerSettings,
)


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    body: bytes
    params: dict[str, str | None]


@dataclass
class CoreServer:
    """Hato's sans-IO server core on a socket; every message is accepted and kept."""

    settings: ServerSettings
    messages: list[Received] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection(self.settings)
        conn.greet()
        writer.write(conn.data_to_send())
        mail: MailFrom | None = None
        rcpts: list[str] = []
        body: list[bytes] = []
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, Sentinel):
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                match event:
                    case MailFrom():
                        mail, rcpts, body = event, [], []
                    case RcptTo():
                        rcpts.append(str(event.address))
                    case BodyChunk():
                        body.append(event.data)
                    case MessageEnd():
                        assert mail is not None
                        sender = "" if mail.path is None else str(mail.path)
                        params = dict(mail.params)
                        self.messages.append(Received(sender, rcpts, b"".join(body), params))
                    case CloseConnection() | ConnectionLost():
                        writer.write(conn.data_to_send())
                        break
                if isinstance(event, Hello | MailFrom | RcptTo | MessageEnd):
                    conn.accept()
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[int]:
    """Run `handler` per connection on 127.0.0.1; yields the port."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await handler(reader, writer)  # type: ignore[misc]

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


@dataclass
class Script:
    """A scripted SMTP/LMTP peer. Replies are full wire lines; a reply starting with 421 is
    followed by closing the connection. `rcpt` maps a recipient's local part to its reply."""

    greeting: bytes = b"220 mx.example.org ESMTP\r\n"
    ehlo: bytes = b"250-mx.example.org\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000\r\n"
    helo: bytes = b"250 mx.example.org\r\n"
    mail: bytes = b"250 2.1.0 Ok\r\n"
    rcpt: dict[str, bytes] = field(default_factory=dict)
    data: bytes = b"354 Go ahead\r\n"
    # after the body: one reply (SMTP) or one per accepted recipient (LMTP, several joined)
    dot: bytes = b"250 2.0.0 Ok: queued as X1\r\n"
    drop_in_data: bool = False  # close the connection after a few octets of the body
    silent: bool = False  # never send the greeting
    commands: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.silent:
                await reader.read()
                return
            await self._send(writer, self.greeting)
            while line := await reader.readline():
                self.commands.append(line)
                reply = await self._answer(line, reader, writer)
                if reply is None:
                    return
                if not await self._send(writer, reply):
                    return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, reply: bytes) -> bool:
        writer.write(reply)
        await writer.drain()
        return not reply.startswith(b"421") and not reply.startswith(b"221")

    async def _answer(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb in (b"EHLO", b"LHLO"):
            return self.ehlo
        if verb == b"HELO":
            return self.helo
        if verb == b"MAIL":
            return self.mail
        if verb == b"RCPT":
            local = line.split(b"<", 1)[1].split(b"@", 1)[0].decode()
            return self.rcpt.get(local, b"250 2.1.5 Ok\r\n")
        if verb == b"DATA":
            if not self.data.startswith(b"354"):
                return self.data
            await self._send(writer, self.data)
            if self.drop_in_data:
                await reader.read(5)
                return None
            lines: list[bytes] = []
            while (body_line := await reader.readline()) not in (b".\r\n", b""):
                lines.append(body_line)
            if lines:
                self.bodies.append(b"".join(lines) + b".\r\n")
            return self.dot
        if verb == b"BDAT":
            words = line.split()
            self.bodies.append(await reader.readexactly(int(words[1])))
            return self.dot if len(words) > 2 else b"250 2.0.0 chunk ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"250 2.0.0 Ok\r\n"  # RSET, NOOP
