"""Encryption at rest for mailboxes behind Dovecot's LMTP (docs/encryption.md, "Mailboxes
behind LMTP"): a `[[domain]]` with a `[[transport]] lmtp` is one of ours. Its users import
keys (`hato key import`, `hato key wkd-export`), and their mail, by every door (port 25,
submission, hato-sendmail, an alias forwarding to them, a DSN), is encrypted before the queue
and handed to a real private Dovecot over LMTP; gpg opens what Dovecot stored. No marker of
the mail is in the clear in Hato's data directory, its log, or Dovecot's mail store.
"""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.outbound_peers import Dovecot
from peers.outbound_scripted import ScriptedPeer, Step
from peers.server import USER_PASSWORD, DomainSetup, MailSetup
from peers.tls import TestCA

from kit.cryptokeys import Gpg

REFUSED = "550 5.1.1 no such user here"


class LmtpHato(HatoServer):
    """example.org's mailboxes (bob, keyed; carol) are behind Dovecot's LMTP; users.test's
    (alice, and the alias fwd@ for bob@example.org) are Maildirs here; remote.test is a
    scripted next hop."""

    def __init__(self, data_dir: Path, ca: TestCA, lmtp_port: int, peer_port: int) -> None:
        domains = (
            DomainSetup("example.org", users=("bob", "carol"), aliases=(("team", ("bob",)),)),
            DomainSetup("users.test", users=("alice",), aliases=(("fwd", ("bob@example.org",)),)),
        )
        super().__init__(data_dir, MailSetup(domains=domains, submission=True, tls=ca.tls_files()))
        self.ca = ca
        self.lmtp_port, self.peer_port = lmtp_port, peer_port

    def _config_text(self) -> str:
        return (
            super()._config_text()
            + "\n[delivery]\nallow_loopback = true\nconnect_timeout = 5\nattempt_timeout = 20\n"
            + f'\n[[transport]]\ndomain = "example.org"\nlmtp = "{LOOPBACK}:{self.lmtp_port}"\n'
            + f'\n[[transport]]\ndomain = "remote.test"\nrelay = "{LOOPBACK}:{self.peer_port}"\n'
            + 'tls = "none"\n'
        )


@pytest.fixture
def dovecot(workdir: Path) -> Iterator[Dovecot]:
    server = Dovecot(workdir / "dovecot", lmtp=True)
    server.start()
    yield server  # pytest runs the rest however the test ended
    server.stop()


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(LOOPBACK, free_port(), [Step(rcpt=REFUSED)]) as scripted:
        yield scripted


@pytest.fixture
def hato(
    workdir: Path, test_ca: TestCA, dovecot: Dovecot, peer: ScriptedPeer, gpg: Gpg
) -> Iterator[LmtpHato]:
    server = LmtpHato(workdir / "data", test_ca, dovecot.port, peer.port)
    server.start()
    try:
        server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
        yield server
    finally:
        server.stop()


def _message(marker: str, sender: str, to: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: secret {marker}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@users.test>\r\n\r\nThe plan is {marker}.\r\n"
    ).encode()


def _grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _at_dovecot(dovecot: Dovecot, user: str, count: int = 1) -> list[bytes]:
    box = dovecot.maildir(user, "example.org")
    found = maildir.wait_for_count(box, count, 60)
    assert len(found) == count, dovecot.log_text()[-3000:]
    return [path.read_bytes() for path in found]


def _opened(gpg: Gpg, stored: bytes) -> bytes:
    """What bob's gpg reads in a message Dovecot stored (LF line ends, its own trace fields
    on top): the encrypted part of a PGP/MIME message."""
    assert b"multipart/encrypted" in stored, stored[:2000]
    assert b"-----BEGIN PGP MESSAGE-----" in stored
    return gpg.run("--decrypt", input=stored.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1])


def _only_ciphertext(hato: LmtpHato, dovecot: Dovecot, gpg: Gpg, marker: str) -> bytes:
    (stored,) = _at_dovecot(dovecot, "bob")
    opened = _opened(gpg, stored)
    assert f"The plan is {marker}.".encode() in opened
    assert _grep(dovecot.dir / "mail", marker.encode()) == []
    assert _grep(hato.data_dir, marker.encode()) == []  # spool, SQLite, no Maildir of bob's
    assert marker.encode() not in hato.log.read_bytes()
    assert not hato.mailbox("bob", "example.org").exists()
    return opened


@pytest.mark.parametrize("rcpt", ["bob@example.org", "team@example.org", "fwd@users.test"])
def test_port_25_mail_to_a_keyed_lmtp_mailbox_reaches_dovecot_encrypted(
    hato: LmtpHato, dovecot: Dovecot, gpg: Gpg, rcpt: str
) -> None:
    marker = uuid.uuid4().hex
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
        smtp.sendmail("someone@example.net", [rcpt], _message(marker, "someone@example.net", rcpt))
    opened = _only_ciphertext(hato, dovecot, gpg, marker)
    assert f"Subject: secret {marker}".encode() in opened  # RFC 9788: protected inside
    assert hato.wait_for_log(r"event=delivered .*to=<bob@example\.org>")


def test_submission_to_keyed_and_unkeyed_lmtp_mailboxes(
    hato: LmtpHato, dovecot: Dovecot, gpg: Gpg
) -> None:
    marker = uuid.uuid4().hex
    context = ssl.create_default_context(cafile=str(hato.ca.ca_cert))
    with smtplib.SMTP(hato.host, hato.submission_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login("alice@users.test", USER_PASSWORD)
        to = ["bob@example.org", "carol@example.org"]
        smtp.sendmail("alice@users.test", to, _message(marker, "alice@users.test", to[0]))
    (for_carol,) = _at_dovecot(dovecot, "carol")  # no key: her copy as sent
    assert f"The plan is {marker}.".encode() in for_carol
    (for_bob,) = _at_dovecot(dovecot, "bob")
    assert marker.encode() not in for_bob
    assert f"The plan is {marker}.".encode() in _opened(gpg, for_bob)
    assert not hato.mailbox("carol", "example.org").exists()


def test_hato_sendmail_to_a_keyed_lmtp_mailbox(hato: LmtpHato, dovecot: Dovecot, gpg: Gpg) -> None:
    marker = uuid.uuid4().hex
    done = hato.sendmail(
        ["-f", "alice@users.test", "bob@example.org"],
        _message(marker, "alice@users.test", "bob@example.org"),
    )
    assert done.returncode == 0, done.stderr
    _only_ciphertext(hato, dovecot, gpg, marker)


def test_a_bounce_to_a_keyed_lmtp_mailbox(
    hato: LmtpHato, dovecot: Dovecot, peer: ScriptedPeer, gpg: Gpg
) -> None:
    marker = uuid.uuid4().hex
    # bob's mail to a next hop that refuses it: the DSN returns it whole to bob, over LMTP.
    done = hato.sendmail(
        ["-f", "bob@example.org", "nobody@remote.test"],
        _message(marker, "bob@example.org", "nobody@remote.test"),
    )
    assert done.returncode == 0, done.stderr
    assert hato.wait_for_log(r"event=dsn-queued ")
    (stored,) = _at_dovecot(dovecot, "bob")
    assert marker.encode() not in stored
    opened = _opened(gpg, stored)
    assert b"Final-Recipient: rfc822;nobody@remote.test" in opened
    assert f"The plan is {marker}.".encode() in opened
    assert len(peer.transactions) == 1
    assert _grep(dovecot.dir / "mail", marker.encode()) == []


def test_keys_and_wkd_for_an_lmtp_domain(hato: LmtpHato, gpg: Gpg, workdir: Path) -> None:
    shown = hato.hato("key", "show", "bob@example.org")
    assert shown.returncode == 0, shown
    assert gpg.fingerprint("bob@example.org").lower() in shown.stdout.lower()
    exported = hato.hato("key", "wkd-export", str(workdir / "wkd"))
    assert exported.returncode == 0, exported
    hu = workdir / "wkd" / "direct" / "example.org" / ".well-known" / "openpgpkey" / "hu"
    (published,) = hu.iterdir()
    listed = gpg.run("--with-colons", "--show-keys", str(published)).decode()
    assert f":{gpg.fingerprint('bob@example.org')}:" in listed
    # The mail already in Dovecot's mailboxes is Dovecot's: the command says so.
    existing = hato.hato("key", "encrypt-existing", "bob@example.org")
    assert existing.returncode != 0
    assert "LMTP server" in existing.stderr, existing


def test_a_copy_queued_in_the_clear_is_encrypted_before_lmtp_once_a_key_is_imported(
    hato: LmtpHato, dovecot: Dovecot, gpg: Gpg
) -> None:
    # Dovecot is down: carol's mail (she has no key yet) waits in the queue in the clear.
    dovecot.stop()
    marker = uuid.uuid4().hex
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
        to = "carol@example.org"
        smtp.sendmail("someone@example.net", [to], _message(marker, "someone@example.net", to))
    assert hato.wait_for_log(r"event=deferred .*to=<carol@example\.org>", timeout=60)
    # She imports a key; Dovecot is back: the queue runner encrypts the copy before LMTP.
    gpg.run("--quick-gen-key", "Carol <carol@example.org>", "future-default", "default", "never")
    hato.import_key("carol@example.org", gpg.export("carol@example.org"), "carol.asc")
    dovecot.start()
    flushed = hato.hato("queue", "flush")
    assert flushed.returncode == 0, flushed
    (stored,) = _at_dovecot(dovecot, "carol")
    assert f"The plan is {marker}.".encode() in _opened(gpg, stored)
    assert _grep(dovecot.dir / "mail", marker.encode()) == []
    assert hato.wait_for_log(r"event=queued-copy-encrypted ")
