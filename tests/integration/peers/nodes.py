"""Several `hato serve` nodes on one shared PostgreSQL store (issue 16's tests): start them
on their loopback addresses, and send each a marked message the way the tests count them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg

from hato.pgstore import migrate
from peers.hato import HatoServer
from peers.maildir import MARKER_HEADER
from peers.net import RawSession
from peers.postgres import PASSWORD
from peers.server import DomainSetup, MailSetup

N = TypeVar("N", bound=HatoServer)
# Two named nodes, as two machines: their [store] node names and loopback addresses.
ALPHA_BETA = (("alpha", "127.0.0.2"), ("beta", "127.0.0.4"))


@contextmanager
def started(nodes: Iterable[N]) -> Iterator[list[N]]:
    """Each node started in turn (the next one made once the one before runs); all those
    started are stopped after, whatever the test did to them."""
    running: list[N] = []
    try:
        for node in nodes:
            node.start()
            running.append(node)
        yield running
    finally:
        for node in running:
            node.stop()


def running_nodes(
    workdir: Path, setup: MailSetup, hosts: Sequence[str]
) -> AbstractContextManager[list[HatoServer]]:
    """One node per address, each with its own data dir (workdir/nodeN); all stopped after."""
    return started(
        HatoServer(workdir / f"node{n}", setup, host=host) for n, host in enumerate(hosts)
    )


def plain_node(data_dir: Path, setup: MailSetup, host: str) -> HatoServer:
    return HatoServer(data_dir, setup, host=host)


@contextmanager
def alpha_and_beta(
    workdir: Path,
    dsn: str,
    password_file: Path,
    domain: str,
    make: Callable[[Path, MailSetup, str], N],
    heartbeat: float | None = None,
) -> Iterator[list[N]]:
    """The schema made on the store at `dsn`, then nodes alpha (127.0.0.2) and beta (127.0.0.4)
    on it, `make(workdir/NAME, setup, host)`, each named in [store] node and accepting any
    recipient at `domain`."""
    with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
        migrate(conn)

    def node(name: str, host: str) -> N:
        setup = MailSetup(
            domains=(DomainSetup(domain, accept_any=True),),
            store=(dsn, password_file),
            node=name,
            heartbeat=heartbeat,
        )
        return make(workdir / name, setup, host)

    with started(node(name, host) for name, host in ALPHA_BETA) as nodes:
        yield nodes


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
