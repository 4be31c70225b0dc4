"""A scripted SMTP receiver for Hato's outbound fault tests: a tiny asyncio server in a thread
that answers each transaction as the test says (a 4xx or 5xx at RCPT or after DATA, a dropped
connection mid-DATA) and records what it got.

Theory of operation: every MAIL FROM starts transaction number n (counted over all connections);
`steps[min(n, len(steps) - 1)]` says how to answer its RCPTs and its DATA. A 421 reply closes the
connection after it is sent (RFC 5321 §3.8). A transaction counts as delivered when its DATA was
answered 2xx. Hooks run in the peer's thread around the final reply to DATA, so a test can act
at the exact moment the remote side has (or has not yet) said 250.

The EHLO keywords are the test's to choose (`keywords`, e.g. without 8BITMIME or with SMTPUTF8);
with an `ssl.SSLContext` the peer offers STARTTLS, and after the handshake adds `tls_keywords`
(e.g. REQUIRETLS, RFC 8689 §4.1: only over TLS). Each transaction records whether it ran on TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Hook = Callable[[], None]
DEFAULT_KEYWORDS = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")


@dataclass(frozen=True, slots=True)
class Step:
    """How one transaction is answered."""

    rcpt: str = "250 2.1.5 Ok"
    data: str = "250 2.0.0 Ok: queued"
    # Close the connection after the first line of message content (no reply to DATA).
    drop_in_data: bool = False


@dataclass(slots=True)
class Transaction:
    mail_from: str  # the MAIL FROM argument, parameters included
    recipients: list[str] = field(default_factory=list)
    tls: bool = False
    content: bytes = b""  # the message, dot-stuffing undone, CRLF line ends
    reply: str = ""  # the reply to the final dot ("" when none was sent)

    @property
    def delivered(self) -> bool:
        return self.reply.startswith("2")


class ScriptedPeer:
    """An SMTP server on `host`:`port` answering by `steps`; `start()`/`stop()` may repeat."""

    def __init__(
        self,
        host: str,
        port: int,
        steps: Sequence[Step] = (Step(),),
        *,
        keywords: Sequence[str] = DEFAULT_KEYWORDS,
        tls: ssl.SSLContext | None = None,
        tls_keywords: Sequence[str] = (),
    ) -> None:
        self.host, self.port = host, port
        self.steps = list(steps)
        self.keywords, self.tls, self.tls_keywords = list(keywords), tls, list(tls_keywords)
        self.name = "peer.test"
        self.before_data_reply: Hook | None = None
        self.after_data_reply: Hook | None = None
        self.connections = 0
        self.transactions: list[Transaction] = []
        self.dialog: list[str] = []  # "C: ..." / "S: ..." lines, commands and replies only
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()
        self._loop = loop
        bind = asyncio.start_server(self._session, self.host, self.port, reuse_address=True)
        self._server = asyncio.run_coroutine_threadsafe(bind, loop).result(10)

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = self._server = self._thread = None

    def __enter__(self) -> ScriptedPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what arrived ------------------------------------------------------------------------

    def delivered(self, marker: str = "") -> list[Transaction]:
        with self._lock:
            done = [t for t in self.transactions if t.delivered]
        return [t for t in done if marker.encode() in t.content]

    def wait_delivered(
        self, marker: str, count: int = 1, timeout: float = 60.0
    ) -> list[Transaction]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.delivered(marker)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    # --- the session -------------------------------------------------------------------------

    def _step(self, number: int) -> Step:
        return self.steps[min(number, len(self.steps) - 1)]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            async with asyncio.timeout(60):
                await self._converse(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, text: str) -> None:
        self.dialog.append(f"S: {text}")
        writer.write(text.encode() + b"\r\n")
        await writer.drain()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._reply(writer, f"220 {self.name} ESMTP scripted")
        txn: Transaction | None = None
        step = Step()
        on_tls = False
        while line := await reader.readline():
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.dialog.append(f"C: {command}")
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await self._reply(writer, self._ehlo(on_tls))
            elif verb == "STARTTLS" and self.tls is not None and not on_tls:
                await self._reply(writer, "220 2.0.0 Ready to start TLS")
                await writer.start_tls(self.tls)  # RFC 3207 §4.2: EHLO again follows
                on_tls, txn = True, None
            elif verb == "MAIL":
                with self._lock:
                    step = self._step(len(self.transactions))
                    txn = Transaction(command[10:].strip(), tls=on_tls)
                    self.transactions.append(txn)
                await self._reply(writer, "250 2.1.0 Ok")
            elif verb == "RCPT" and txn is not None:
                if step.rcpt.startswith("2"):
                    txn.recipients.append(command[8:].strip())
                await self._reply(writer, step.rcpt)
                if step.rcpt.startswith("421"):
                    return
            elif verb == "DATA" and txn is not None and txn.recipients:
                await self._reply(writer, "354 End data with <CR><LF>.<CR><LF>")
                if not await self._data(reader, writer, txn, step):
                    return
                txn = None
            elif verb == "DATA":
                await self._reply(writer, "554 5.5.1 Error: no valid recipients")
            elif verb in ("RSET", "NOOP"):
                txn = None if verb == "RSET" else txn
                await self._reply(writer, "250 2.0.0 Ok")
            elif verb == "QUIT":
                await self._reply(writer, "221 2.0.0 Bye")
                return
            else:
                await self._reply(writer, "502 5.5.2 Error: command not recognized")

    def _ehlo(self, on_tls: bool) -> str:
        words = [*self.keywords]
        if self.tls is not None and not on_tls:
            words.append("STARTTLS")
        if on_tls:
            words += self.tls_keywords
        lines = [self.name, *words]
        return "\r\n".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{text}" for i, text in enumerate(lines)
        )

    async def _data(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        txn: Transaction,
        step: Step,
    ) -> bool:
        """Read the content up to CRLF.CRLF (RFC 5321 §4.1.1.4) and answer; False: closed."""
        lines: list[bytes] = []
        while True:
            line = await reader.readuntil(b"\r\n")
            if step.drop_in_data:
                self.dialog.append("S: (connection dropped mid-DATA)")
                return False
            if line == b".\r\n":
                break
            # RFC 5321 §4.5.2: a leading dot of a content line was doubled by the client.
            lines.append(line[1:] if line.startswith(b".") else line)
        txn.content = b"".join(lines)
        if self.before_data_reply is not None:
            self.before_data_reply()
        txn.reply = step.data
        await self._reply(writer, step.data)
        if self.after_data_reply is not None:
            self.after_data_reply()
        return not step.data.startswith("421")
