"""An asyncio driver of the milter protocol (protocol.py): one connection to one milter per
message, every step from SMFIC_OPTNEG to SMFIC_BODYEOB, the message streamed (one chunk in
memory at a time).

Theory of operation. `check` connects (within the connect timeout), negotiates, then tells
the milter the connection (SMFIC_CONNECT, SMFIC_HELO), the envelope (SMFIC_MAIL, SMFIC_RCPT
each), SMFIC_DATA, the header fields of the message as it will be stored, SMFIC_EOH, the
body in chunks of at most 65535 octets and SMFIC_BODYEOB, each preceded by its macros and
each left out or left unanswered as the milter negotiated. Every reply is awaited within the
command timeout; the end-of-message reply within the eom timeout, restarted by each
SMFIR_PROGRESS. A final reply other than continue before the end (accept, discard, reject,
tempfail, a reply code) ends the conversation there, as libmilter's MTAs do. What the milter
asks at the end is bounded: a new body (SMFIR_REPLBODY, as long as the milter likes) goes,
piece by piece, to the caller's `replacement` writer (which refuses one past its limit), and
the other changes may hold at most MAX_CHANGES octets; past either, the milter is taken as
speaking nonsense (DESIGN.md: memory per message is bounded, whatever a filter echoes of an
outsider's message). The connection
is closed with SMFIC_QUIT. A milter that cannot be reached, is too slow, closes the
connection or speaks nonsense raises `MilterUnavailable`: the caller applies its default
action (Postfix's milter_default_action).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from hato.milter.protocol import (
    MAX_BODY_CHUNK,
    Accept,
    Action,
    Command,
    Continue,
    Event,
    Final,
    MilterProtocolError,
    Modification,
    Negotiated,
    OptionsReply,
    Progress,
    ReplaceBody,
    ReplyReader,
    Skip,
    Step,
    body_commands,
    connect_command,
    header_command,
    helo_command,
    macro_command,
    mail_command,
    optneg_command,
    rcpt_command,
    simple_command,
)
from hato.model.header import split_header_fields

MAX_HEADER_SECTION = 1024 * 1024  # octets of header section we split into fields
MAX_CHANGES = 1024 * 1024  # octets of the end-of-message changes held, a new body aside

Replacement = Callable[[bytes], None]  # takes a piece of a new body; raises past its limit


class MilterUnavailable(Exception):
    """The milter could not be asked (down, too slow, closed, nonsense)."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """What a milter is told about one message."""

    client_name: str  # the client's verified name, or "[ip]"
    client_ip: str
    client_port: int
    helo: str
    mail_from: str  # "<a@b>" ("<>" for the null path)
    mail_args: tuple[str, ...]  # ESMTP parameters, "SIZE=123"
    recipients: tuple[str, ...]  # "<c@d>" each
    macros: Mapping[Command, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The milter's final word (`Continue` and `Accept` deliver) and the modifications it
    asked for at the end of the message, in order."""

    final: Final
    modifications: tuple[Modification, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Postfix's milter_connect_timeout, milter_command_timeout, milter_content_timeout."""

    connect: float = 30.0
    command: float = 30.0
    eom: float = 300.0


class MilterClient:
    """One milter at `address` ("inet:host:port", "inet6:host:port" or "unix:/path")."""

    def __init__(self, address: str, timeouts: Timeouts | None = None) -> None:
        self.address = address
        self.timeouts = timeouts or Timeouts()
        self.agreed: Negotiated | None = None  # the last negotiation (None: not yet asked)

    @property
    def wants_envelope(self) -> bool:
        """Whether the milter may answer the connect, HELO, MAIL or RCPT step (as far as its
        last negotiation says): only then is an early `probe` worth a connection."""
        agreed = self.agreed
        early = (Command.CONNECT, Command.HELO, Command.MAIL, Command.RCPT)
        return agreed is None or any(agreed.sends(c) and agreed.answers(c) for c in early)

    @property
    def wants_connect(self) -> bool:
        """Whether the milter may answer the connect step (as far as its last negotiation
        says): only then is a `probe_connect` before the greeting worth a connection."""
        agreed = self.agreed
        return agreed is None or (agreed.sends(Command.CONNECT) and agreed.answers(Command.CONNECT))

    async def check(
        self,
        tx: Transaction,
        message: AsyncIterator[bytes],
        replacement: Replacement | None = None,
    ) -> Outcome:
        """The milter's verdict on `message` (header section and body, CRLF lines). With
        `replacement`, each piece of a new body goes there, and the outcome holds an empty
        `ReplaceBody` in its place."""
        return await self._guarded(tx, message, replacement=replacement)

    async def probe(self, tx: Transaction) -> Final | None:
        """The milter's word on the envelope so far (connect, HELO, MAIL, each RCPT of `tx`),
        before DATA: None to go on, else its final reply; the transaction is then aborted."""
        return (await self._guarded(tx, None)).final

    async def probe_connect(self, tx: Transaction) -> Final | None:
        """The milter's word on the connection alone (SMFIC_CONNECT), before the greeting:
        None to go on, else its final reply."""
        return (await self._guarded(tx, None, connect_only=True)).final

    async def _guarded(
        self,
        tx: Transaction,
        message: AsyncIterator[bytes] | None,
        *,
        connect_only: bool = False,
        replacement: Replacement | None = None,
    ) -> Outcome:
        try:
            return await self._check(tx, message, connect_only, replacement)
        except (OSError, EOFError, TimeoutError, MilterProtocolError) as exc:
            raise MilterUnavailable(f"{self.address}: {exc or type(exc).__name__}") from exc

    async def _check(
        self,
        tx: Transaction,
        message: AsyncIterator[bytes] | None,
        connect_only: bool = False,
        replacement: Replacement | None = None,
    ) -> Outcome:
        reader, writer = await asyncio.wait_for(self._open(), self.timeouts.connect)
        talk = _Talk(reader, writer, self.timeouts, replacement)
        try:
            if message is None:
                return Outcome(await talk.envelope(tx, connect_only) or Continue())
            return await talk.message(tx, message)
        finally:
            self.agreed = talk.agreed if talk.agreed.version else self.agreed
            if message is None:
                with contextlib.suppress(OSError):
                    writer.write(simple_command(Command.ABORT))
            with contextlib.suppress(OSError, TimeoutError):
                writer.write(simple_command(Command.QUIT))
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kind, _, rest = self.address.partition(":")
        if kind == "unix":
            return await asyncio.open_unix_connection(rest)
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return await asyncio.open_connection(host or "127.0.0.1", int(port))


class _Talk:
    """One conversation: commands out, replies awaited as negotiated."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeouts: Timeouts,
        replacement: Replacement | None = None,
    ) -> None:
        self.reader, self.writer, self.timeouts = reader, writer, timeouts
        self.replacement = replacement
        self.replies = ReplyReader()
        self.agreed = Negotiated(0, Action(0), Step(0))

    async def envelope(self, tx: Transaction, connect_only: bool = False) -> Final | None:
        """Negotiate, then connect, HELO, MAIL and each RCPT (or the connect step alone):
        None, or the milter's word."""
        self.writer.write(optneg_command())
        reply = await self._event(self.timeouts.command)
        if not isinstance(reply, OptionsReply):
            raise MilterProtocolError(f"{type(reply).__name__} instead of SMFIC_OPTNEG")
        self.agreed = reply.negotiated
        steps: list[tuple[Command, bytes]] = [
            (Command.CONNECT, connect_command(tx.client_name, tx.client_ip, tx.client_port)),
            (Command.HELO, helo_command(tx.helo)),
            (Command.MAIL, mail_command(tx.mail_from, tx.mail_args)),
            *((Command.RCPT, rcpt_command(rcpt)) for rcpt in tx.recipients),
        ]
        for command, data in steps[:1] if connect_only else steps:
            final = await self._step(command, data, tx.macros)
            if final is not None:
                return final
        return None

    async def message(self, tx: Transaction, message: AsyncIterator[bytes]) -> Outcome:
        final = await self.envelope(tx)
        if final is None:
            final = await self._step(Command.DATA, simple_command(Command.DATA), tx.macros)
        if final is not None:
            return Outcome(final)
        body = _Split(message)
        leadspc = bool(self.agreed.steps & Step.HDR_LEADSPC)
        for name, value in await body.fields():
            if not self.agreed.sends(Command.HEADER):
                break
            final = await self._step(Command.HEADER, header_command(name, _value(value, leadspc)))
            if final is not None:
                return Outcome(final)
        final = await self._step(Command.EOH, simple_command(Command.EOH), tx.macros)
        if final is not None:
            return Outcome(final)
        if self.agreed.sends(Command.BODY):
            async for chunk in body.rest():
                final = await self._body(chunk)
                if isinstance(final, Skip):
                    break
                if final is not None:
                    return Outcome(final)
        return await self._end(tx.macros)

    async def _body(self, chunk: bytes) -> Final | None:
        for data in body_commands(chunk):
            final = await self._step(Command.BODY, data)
            if final is not None:
                return final
        return None

    async def _step(
        self, command: Command, data: bytes, macros: Mapping[Command, Mapping[str, str]] = {}
    ) -> Final | None:
        """Send `command` (with its macros); None to go on, else the milter's final word."""
        if not self.agreed.sends(command):
            return None
        if macros.get(command):
            self.writer.write(macro_command(command, dict(macros[command])))
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeouts.command)
        if not self.agreed.answers(command):
            return None
        reply = await self._event(self.timeouts.command)
        if isinstance(reply, Continue):
            return None
        if isinstance(reply, Skip) and command is not Command.BODY:
            raise MilterProtocolError("SMFIR_SKIP outside the body")
        if isinstance(reply, Final):
            return reply
        raise MilterProtocolError(f"{type(reply).__name__} in reply to {command.name}")

    async def _end(self, macros: Mapping[Command, Mapping[str, str]]) -> Outcome:
        if macros.get(Command.BODYEOB):
            self.writer.write(macro_command(Command.BODYEOB, dict(macros[Command.BODYEOB])))
        self.writer.write(simple_command(Command.BODYEOB))
        await asyncio.wait_for(self.writer.drain(), self.timeouts.command)
        changes: list[Modification] = []
        held = 0
        while True:
            event = await self._event(self.timeouts.eom)
            if isinstance(event, Progress):
                continue  # still working: the eom timeout starts again
            if isinstance(event, Skip | OptionsReply):
                raise MilterProtocolError(f"{type(event).__name__} at the end of the message")
            if isinstance(event, Final):
                return Outcome(event, tuple(changes))
            if isinstance(event, ReplaceBody) and self.replacement is not None:
                self.replacement(event.data)  # to the spool, not memory (module docstring)
                event = ReplaceBody(b"")
            held += _octets(event)
            if held > MAX_CHANGES:
                raise MilterProtocolError(f"changes over {MAX_CHANGES} octets")
            changes.append(event)

    async def _event(self, seconds: float) -> Event:
        async with asyncio.timeout(seconds):
            while (event := self.replies.next_event()) is None:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the milter closed the connection")
                self.replies.receive_data(data)
        return event


def _octets(change: Modification) -> int:
    """What a change holds in memory: the length of its texts."""
    values = (getattr(change, f.name) for f in dataclasses.fields(change))
    return sum(len(v) for v in values if isinstance(v, str | bytes))


def _value(raw: bytes, leadspc: bool) -> bytes:
    """A field's value as milters expect it: folded lines joined by LF (libmilter's form), the
    one space after the colon dropped unless SMFIP_HDR_LEADSPC was agreed."""
    value = raw.rstrip(b"\r\n").replace(b"\r\n", b"\n")
    if not leadspc and value[:1] in (b" ", b"\t"):
        value = value[1:]
    return value


class _Split:
    """The message stream as header fields, then the body's chunks."""

    def __init__(self, message: AsyncIterator[bytes]) -> None:
        self._message = message
        self._rest = b""

    async def fields(self) -> list[tuple[bytes, bytes]]:
        head = bytearray()
        async for chunk in self._message:
            head += chunk
            # RFC 5322 §2.1: the header section ends at the first empty line.
            end = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
            if end != -1:
                self._rest = bytes(head[end + 4 :])
                del head[end + 2 :]
                break
            if len(head) > MAX_HEADER_SECTION:
                break
        out = []
        for f in split_header_fields(bytes(head)):
            name, _, value = f.raw.partition(b":")
            out.append((name.strip(), value))
        return out

    async def rest(self) -> AsyncIterator[bytes]:
        if self._rest:
            yield self._rest
        async for chunk in self._message:
            while chunk:
                yield chunk[:MAX_BODY_CHUNK]
                chunk = chunk[MAX_BODY_CHUNK:]


__all__ = ["Accept", "MilterClient", "MilterUnavailable", "Outcome", "Timeouts", "Transaction"]
