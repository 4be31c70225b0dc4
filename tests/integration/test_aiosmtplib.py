"""aiosmtplib against the real server: concurrent sessions, dot-stuffing, 8BITMIME, SMTPUTF8."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import aiosmtplib
from peers import maildir
from peers.server import MailServer


@dataclass(frozen=True, slots=True)
class Case:
    sender: str
    user: str
    domain: str
    body: bytes
    options: tuple[str, ...] = ()
    subject: str = "concurrent"
    marker: str = ""

    def message(self) -> bytes:
        return (
            (
                f"From: <{self.sender}>\r\nTo: <{self.user}@{self.domain}>\r\n"
                f"Subject: {self.subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
                f"Message-ID: <{self.marker}@client.test>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n"
            ).encode()
            + maildir.MARKER_HEADER
            + f": {self.marker}\r\n\r\n".encode()
            + self.body
        )


# RFC 5321 §4.5.2: the client doubles a leading ".", the server removes it again.
DOTS = b".leading dot\r\n..two dots\r\n.\r\n. \r\n.\r\nend. .\r\n..\r\n"
# RFC 6152: BODY=8BITMIME carries octets above 127 unchanged.
UTF8 = "Grüße aus Köln — 鳩が手紙を運ぶ 🕊\r\nčšž ÆØÅ\r\n".encode()


def _cases() -> list[Case]:
    cases = [
        Case("plain@client.test", "one", "example.org", b"first plain\r\n"),
        Case("dots@client.test", "two", "example.org", DOTS),
        Case("eight@client.test", "three", "example.org", UTF8, ("BODY=8BITMIME",)),
        # RFC 6531 §3.4: SMTPUTF8 on MAIL FROM allows UTF-8 in the envelope and the headers.
        Case(
            "jürgen@client.test",
            "zoë",
            "example.org",
            UTF8 + DOTS,
            ("SMTPUTF8", "BODY=8BITMIME"),
            subject="Grüße",
        ),
        Case("plain@client.test", "alice", "users.test", b"to a configured user\r\n"),
        Case("plain@client.test", "one", "example.org", b"second to the same box\r\n" * 500),
    ]
    return [
        Case(c.sender, c.user, c.domain, c.body, c.options, c.subject, uuid.uuid4().hex)
        for c in cases
    ]


async def _send_all(server: MailServer, cases: list[Case]) -> list[dict[str, object]]:
    async def one(case: Case) -> dict[str, object]:
        refused, _ = await aiosmtplib.send(
            case.message(),
            sender=case.sender,
            recipients=[f"{case.user}@{case.domain}"],
            mail_options=list(case.options),
            hostname=server.host,
            port=server.port,
            timeout=30,
        )
        return dict(refused)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(case)) for case in cases]
    return [task.result() for task in tasks]


def test_concurrent_sends_land_byte_exact(mx: MailServer) -> None:
    cases = _cases()
    assert asyncio.run(_send_all(mx, cases)) == [{}] * len(cases)

    for case in cases:
        box = mx.mailbox(case.user, case.domain)
        found = maildir.wait_for_marker(box, case.marker)
        assert len(found) == 1, f"{case.user}@{case.domain} {case.options}: {found}"
        prefix = maildir.split_added(
            found[0].read_bytes(), maildir.stored_form(mx.stores_crlf, case.message())
        )
        assert prefix.startswith(f"Return-Path: <{case.sender}>".encode()), prefix
