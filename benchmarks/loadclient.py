"""A small SMTP load client for the benchmark suite, for what Postfix's smtp-source cannot do:
send prepared messages (DKIM-signed by the suite), AUTH PLAIN over STARTTLS or implicit TLS,
and connect from a chosen loopback address. Lock-step like smtp-source (no PIPELINING), S
sessions at once, either one message per connection or all of a session's messages on one.

    python benchmarks/loadclient.py --messages FILE --sessions 10 [--long] --to RCPT ...
        HOST:PORT

FILE holds the messages, each as "<length>\\n<bytes>" (CRLF line ends, dot-stuffed already).
Prints one JSON line: {"sent": N, "seconds": T, "errors": [...]}. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from pathlib import Path


def read_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out: list[bytes] = []
    at = 0
    while at < len(data):
        newline = data.index(b"\n", at)
        size = int(data[at:newline])
        out.append(data[newline + 1 : newline + 1 + size])
        at = newline + 1 + size
    return out


def write_messages(path: Path, messages: list[bytes]) -> None:
    with path.open("wb") as out:
        for message in messages:
            out.write(b"%d\n" % len(message))
            out.write(message)


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with "." gets another one; then the end mark."""
    body = message.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class SmtpError(Exception):
    pass


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, want: int) -> None:
        """RFC 5321 §4.2.1: "ddd-" continues a reply, "ddd " ends it."""
        while True:
            line = await self.reader.readline()
            if not line:
                raise SmtpError(f"connection closed waiting for {want}")
            if line[3:4] != b"-":
                break
        if int(line[:3]) != want:
            raise SmtpError(f"wanted {want}, got {line.decode(errors='replace').strip()}")

    async def command(self, line: bytes, want: int) -> None:
        self.writer.write(line + b"\r\n")
        await self.reply(want)


class Load:
    def __init__(self, args: argparse.Namespace, messages: list[bytes]) -> None:
        self.args = args
        self.messages = messages
        self.next = 0
        self.sent = 0
        self.errors: list[str] = []
        host, port = args.target.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.tls: ssl.SSLContext | None = None
        if args.tls != "none":
            self.tls = ssl.create_default_context()
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
        self.auth = b""
        if args.user:
            plain = b"\0" + args.user.encode() + b"\0" + args.password.encode()
            self.auth = b"AUTH PLAIN " + base64.b64encode(plain)

    def take(self) -> bytes | None:
        if self.next >= len(self.messages):
            return None
        message = self.messages[self.next]
        self.next += 1
        return message

    async def connect(self) -> Session:
        source = (self.args.source, 0) if self.args.source else None
        implicit = self.tls if self.args.tls == "implicit" else None
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=implicit, local_addr=source, server_hostname=None
        )
        session = Session(reader, writer)
        await session.reply(220)
        await session.command(b"EHLO " + self.args.helo.encode(), 250)
        if self.args.tls == "starttls":
            await session.command(b"STARTTLS", 220)
            assert self.tls is not None
            await writer.start_tls(self.tls)
            await session.command(b"EHLO " + self.args.helo.encode(), 250)
        if self.auth:
            await session.command(self.auth, 235)
        return session

    async def transaction(self, session: Session, message: bytes) -> None:
        await session.command(b"MAIL FROM:<" + self.args.sender.encode() + b">", 250)
        for rcpt in self.args.to:
            await session.command(b"RCPT TO:<" + rcpt.encode() + b">", 250)
        await session.command(b"DATA", 354)
        session.writer.write(message)
        await session.reply(250)
        self.sent += 1

    async def close(self, session: Session) -> None:
        try:
            await session.command(b"QUIT", 221)
        finally:
            session.writer.close()

    async def worker(self) -> None:
        session: Session | None = None
        try:
            while (message := self.take()) is not None:
                if session is None:
                    session = await self.connect()
                await self.transaction(session, message)
                if not self.args.long:
                    await self.close(session)
                    session = None
            if session is not None:
                await self.close(session)
        except (OSError, SmtpError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def run(self) -> float:
        start = time.monotonic()
        await asyncio.gather(*(self.worker() for _ in range(self.args.sessions)))
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--long", action="store_true", help="all messages of a session on one")
    parser.add_argument("--sender", default="bench@sender.bench")
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--helo", default="client.sender.bench")
    parser.add_argument("--source", help="local address to connect from")
    parser.add_argument("--tls", choices=("none", "starttls", "implicit"), default="none")
    parser.add_argument("--user")
    parser.add_argument("--password", default="")
    parser.add_argument("--wait", action="store_true", help='print "ready", start on a line in')
    args = parser.parse_args()
    messages = [dot_stuff(m) for m in read_messages(args.messages)]
    try:
        import uvloop  # the server's own loop, so the client is not the bottleneck

        uvloop.install()
    except ImportError:
        pass
    load = Load(args, messages)
    if args.wait:  # the suite starts its clock when we are ready, not at interpreter start-up
        print("ready", flush=True)
        sys.stdin.readline()
    seconds = asyncio.run(load.run())
    print(json.dumps({"sent": load.sent, "seconds": seconds, "errors": load.errors[:5]}))
    return 0 if not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
