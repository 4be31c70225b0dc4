"""Red team, 2026-12-08: the encryption promise on the paths the earlier tests did not take
(docs/security.md). Mail for a keyed user, whichever way it comes: BDAT chunks, an alias, a
+tag form, through the queue (direct delivery off) and `hato queue show` of it; no plaintext
in the data directory, the Maildir or the log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer, serving_with_keys
from peers.net import RawSession
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import Gpg


@pytest.fixture(scope="module", params=[True, False], ids=["direct", "queued"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, gpg: Gpg
) -> Iterator[HatoServer]:
    path = tmp_path_factory.mktemp("paths")
    domain = DomainSetup("example.org", users=("bob",), aliases=(("team", ("bob",)),))
    setup = MailSetup(domains=(domain,), direct_local_delivery=request.param)
    with serving_with_keys(
        path / "data", setup, {"bob@example.org": gpg.export("bob@example.org")}
    ) as hato:
        yield hato


def _message(marker: str) -> bytes:
    return (
        f"From: <alice@example.net>\r\nTo: <team@example.org>\r\nSubject: secret {marker}\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nThe plan is {marker}.\r\n"
    ).encode()


def _nowhere(server: HatoServer, marker: str) -> None:
    needle = marker.encode()
    found = [p for p in server.data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert found == []
    assert needle not in server.log.read_bytes()


def _box(server: HatoServer) -> Path:
    return server.mailbox("bob", "example.org")


@pytest.mark.parametrize("rcpt", ["team@example.org", "bob+tag@example.org", "BOB@example.org"])
def test_bdat_to_a_keyed_mailbox_by_any_name_stores_only_ciphertext(
    server: HatoServer, gpg: Gpg, rcpt: str
) -> None:
    marker = uuid.uuid4().hex
    message = _message(marker)
    before = maildir.messages(_box(server))
    with RawSession(server.host, server.port, timeout=30) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<alice@example.net>")[0] == 250
        assert session.command(f"RCPT TO:<{rcpt}>".encode())[0] == 250
        half = len(message) // 2
        for chunk, last in ((message[:half], False), (message[half:], True)):
            verb = b"BDAT %d%s" % (len(chunk), b" LAST" if last else b"")
            session.send(verb + b"\r\n" + chunk)
            assert session.reply()[0] == 250
    stored = maildir.wait_for_new(_box(server), before, 30)
    assert b"The plan is " + marker.encode() in gpg.run(
        "--decrypt", input=stored.split(b"\r\n\r\n", 1)[1]
    )
    _nowhere(server, marker)


def test_queue_show_of_keyed_mail_shows_no_content(server: HatoServer) -> None:
    marker = uuid.uuid4().hex
    before = maildir.messages(_box(server))
    with RawSession(server.host, server.port, timeout=30) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<alice@example.net>")[0] == 250
        assert session.command(b"RCPT TO:<team@example.org>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        code, lines = session.command(_message(marker) + b".")
        assert code == 250
    queue_id = lines[-1].split()[-1].decode()
    shown = server.hato("queue", "show", "--json", queue_id)
    assert marker not in shown.stdout + shown.stderr
    if shown.returncode == 0:
        assert "secret" not in json.dumps(json.loads(shown.stdout))
    maildir.wait_for_new(_box(server), before, 30)
    _nowhere(server, marker)
