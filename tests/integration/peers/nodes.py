"""Several `hato serve` nodes on one shared PostgreSQL store (issue 16's tests): start them
on their loopback addresses, and send each a marked message the way the tests count them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from peers.hato import HatoServer
from peers.maildir import MARKER_HEADER
from peers.net import RawSession
from peers.server import MailSetup


@contextmanager
def running_nodes(
    workdir: Path, setup: MailSetup, hosts: Sequence[str]
) -> Iterator[list[HatoServer]]:
    """One node per address, each with its own data dir (workdir/nodeN); all stopped after."""
    started: list[HatoServer] = []
    try:
        for n, host in enumerate(hosts):
            node = HatoServer(workdir / f"node{n}", setup, host=host)
            node.start()
            started.append(node)
        yield started
    finally:
        for node in started:
            node.stop()


def send_marked(node: HatoServer, marker: str) -> tuple[int, bytes]:
    """One message from alice@example.net to bob@example.org carrying `marker`: the first
    reply that is not a success (its code and last line), or DATA's final one."""
    with RawSession(node.host, node.port, timeout=60) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        for line in (b"MAIL FROM:<alice@example.net>", b"RCPT TO:<bob@example.org>"):
            code, lines = session.command(line)
            if code != 250:
                return code, lines[-1]
        code, lines = session.command(b"DATA")
        if code != 354:
            return code, lines[-1]
        body = MARKER_HEADER + f": {marker}\r\nSubject: {marker}\r\n\r\nhello\r\n.".encode()
        code, lines = session.command(body)
        return code, lines[-1]
