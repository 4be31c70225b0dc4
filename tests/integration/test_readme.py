"""The README's quick tour against the real `hato serve` (issue 13 item 13): the message its
smtplib example sends lands under the file name and with the header lines the README shows,
byte for byte but for the arrival time and the queue id."""

from __future__ import annotations

import ast
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, hato_dns

README = Path(__file__).resolve().parents[2] / "README.md"
# What differs from one run to the next: the time (in the name and the Received date) and the
# queue id (14 characters of Crockford's base32).
_QUEUE_ID = re.compile(r"[0-9A-Z]{14}")
_NAME = re.compile(r"(\d+)\.M(\d+)Q([0-9A-Z]{14})R(-?\d+)\.localhost,S=(\d+)")
_DATE = re.compile(r"; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000")


class TourHato(HatoServer):
    """The embedded default as the README runs it (hostname and domain localhost, any local
    part, inbound checks on), on a free port, with an empty test DNS: nothing is published."""

    def __init__(self, data_dir: Path, nameserver: str) -> None:
        setup = MailSetup(domains=(DomainSetup("localhost", accept_any=True),))
        super().__init__(data_dir, setup)
        self.nameserver = nameserver

    def _config_text(self) -> str:
        text = super()._config_text().replace('hostname = "hato.test"', 'hostname = "localhost"')
        text = text.replace("inbound = false", "inbound = true")
        return text + hato_dns(self.nameserver)


@pytest.fixture
def tour(workdir: Path) -> Iterator[TourHato]:
    with DnsTestServer({}) as dns:
        server = TourHato(workdir / "data", dns.nameserver)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _readme_tour() -> tuple[str, bytes, bytes]:
    """(the file name, the file as shown, the message sent) of the README's quick tour."""
    text = README.read_text(encoding="utf-8")
    shown = re.search(
        r"\$ ls hato-data/mailboxes/localhost/alice/new/\n(\S+)\n\$ cat [^\n]*\n(.*?)```",
        text,
        re.DOTALL,
    )
    sent = re.search(
        r'message = (b"[^"]*")\n\s*smtp\.sendmail\("me@example\.test", \["alice@localhost"\], '
        r"message\)",
        text,
    )
    assert shown is not None and sent is not None, "the README's quick tour moved"
    message = ast.literal_eval(sent.group(1))
    assert isinstance(message, bytes)
    return shown.group(1), shown.group(2).replace("\n", "\r\n").encode(), message


def _masked(data: bytes) -> str:
    text = _DATE.sub("; DATE", data.decode())
    return _QUEUE_ID.sub("QUEUEID", text)


def test_the_readme_shows_what_hato_writes(tour: TourHato) -> None:
    name, shown, message = _readme_tour()
    with smtplib.SMTP(tour.host, tour.port, timeout=30) as smtp:
        smtp.sendmail("me@example.test", ["alice@localhost"], message)
    (stored,) = maildir.wait_for_count(tour.mailbox("alice", "localhost"), 1, 15)
    readme_name, real_name = _NAME.fullmatch(name), _NAME.fullmatch(stored.name)
    assert readme_name is not None, name
    assert real_name is not None, stored.name
    # The copy's number and the size (the same lengths of time and id) are as shown.
    assert real_name.group(4, 5) == readme_name.group(4, 5)
    assert _masked(stored.read_bytes()) == _masked(shown)
