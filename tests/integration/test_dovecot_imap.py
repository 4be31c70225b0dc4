"""Dovecot reads the mail Hato delivered (issue 13 items 4 and 5), against the real `hato serve`
and a real private Dovecot configured by `hato dovecot-config`: the mail files belong to the
mailbox owner, a user logs in over IMAP with the password Hato has for them (checkpassword
`hato dovecot-auth`), FETCH returns each file byte for byte, the Junk folder (DMARC quarantine)
is there; and `hato key encrypt-existing` keeps every message's Dovecot UID."""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from peers import maildir
from peers.dovecot_imap import OWNER, DovecotImap, VmailHato
from peers.hato import HatoServer
from peers.net import LOOPBACK
from peers.server import USER_PASSWORD

from dnsserver import DnsTestServer, ZoneValue, hato_dns
from kit.cryptokeys import make_cert

ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "relaxed.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.relaxed.test": {"TXT": ["v=DMARC1; p=none"]},
    "careful.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.careful.test": {"TXT": ["v=DMARC1; p=quarantine"]},
}


class CheckingVmailHato(VmailHato):
    """Mailboxes outside the data directory, owned by OWNER; inbound checks against our DNS."""

    def __init__(self, data_dir: Path, nameserver: str) -> None:
        super().__init__(data_dir, hato_dns(nameserver))

    def _config_text(self) -> str:
        return super()._config_text().replace("inbound = false", "inbound = true")


@pytest.fixture
def hato(workdir: Path, require_peer: Callable[[str], str]) -> Iterator[CheckingVmailHato]:
    require_peer("dovecot")
    with DnsTestServer(ZONE) as dns:
        server = CheckingVmailHato(workdir / "data", dns.nameserver)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def dovecot(hato: CheckingVmailHato, workdir: Path) -> Iterator[DovecotImap]:
    imap = DovecotImap.for_hato(hato, workdir / "dovecot")
    imap.start()
    try:
        yield imap
    finally:
        imap.stop()


def _fetch_all(port: int, folder: str) -> tuple[bytes, dict[int, bytes]]:
    """(UIDVALIDITY, {uid: the message as IMAP gives it}) of one folder, as alice."""
    with imaplib.IMAP4(LOOPBACK, port) as client:
        client.login("alice@example.test", USER_PASSWORD)
        status, _ = client.select(folder, readonly=True)
        assert status == "OK", folder
        validity = client.untagged_responses["UIDVALIDITY"][0]
        assert isinstance(validity, bytes)
        status, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert status == "OK", data
        found: dict[int, bytes] = {}
        for item in data:
            if isinstance(item, tuple):
                uid = re.search(rb"UID (\d+)", item[0])
                assert uid is not None, item
                found[int(uid.group(1))] = item[1]
        return validity, found


def _send(hato: HatoServer, sender: str, marker: str) -> bytes:
    message = (
        f"From: <{sender}>\r\nTo: <alice@example.test>\r\nSubject: for IMAP\r\n"
        f"Message-ID: <{marker}@test>\r\n{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\n"
        "Zq7xK3 plaintext body\r\n"
    ).encode()
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
        smtp.sendmail(sender, ["alice@example.test"], message)
    return message


def test_dovecot_serves_hato_mail_over_imap_and_encryption_keeps_uids(
    hato: CheckingVmailHato, dovecot: DovecotImap
) -> None:
    _send(hato, "a@relaxed.test", "inbox-1")
    _send(hato, "a@careful.test", "junk-1")  # DMARC p=quarantine: the Junk folder
    box = hato.mailbox("alice", "example.test")
    (inbox_file,) = maildir.wait_for_marker(box, "inbox-1")
    (junk_file,) = maildir.wait_for_marker(box / ".Junk", "junk-1")
    owner = pwd.getpwnam(OWNER)
    for path in (box, box / "new", box / ".Junk", box / ".Junk" / "new", inbox_file, junk_file):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (owner.pw_uid, owner.pw_gid), path

    # The password Hato has for alice opens IMAP; a wrong one does not.
    with imaplib.IMAP4(LOOPBACK, dovecot.port) as client, pytest.raises(imaplib.IMAP4.error):
        client.login("alice@example.test", "not the password")
    with imaplib.IMAP4(LOOPBACK, dovecot.port) as client:
        try:
            client.login("alice@example.test", USER_PASSWORD)
        except imaplib.IMAP4.error as exc:
            raise AssertionError(f"{exc}: {dovecot.log_text()}") from exc
        status, folders = client.list()
        assert status == "OK" and any(b"Junk" in f for f in folders if isinstance(f, bytes))
    validity, inbox = _fetch_all(dovecot.port, "INBOX")
    junk_validity, junk = _fetch_all(dovecot.port, "Junk")
    assert list(inbox.values()) == [inbox_file.read_bytes()]  # byte for byte
    assert list(junk.values()) == [junk_file.read_bytes()]

    # Encrypting the stored mail keeps each message's UID (no client downloads it again).
    smime = make_cert(ec.generate_private_key(ec.SECP256R1()), "alice@example.test")
    (hato.work / "alice.pem").write_bytes(smime.cert_pem)
    imported = hato.hato("key", "import", "alice@example.test", str(hato.work / "alice.pem"))
    assert imported.returncode == 0, imported.stderr
    done = hato.hato("key", "encrypt-existing", "alice@example.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 encrypted" in done.stdout
    after_validity, after = _fetch_all(dovecot.port, "INBOX")
    after_junk_validity, after_junk = _fetch_all(dovecot.port, "Junk")
    assert (after_validity, after_junk_validity) == (validity, junk_validity)
    assert after.keys() == inbox.keys() and after_junk.keys() == junk.keys()
    for fetched in (*after.values(), *after_junk.values()):
        assert b"application/pkcs7-mime" in fetched and b"Zq7xK3" not in fetched
    (stored,) = maildir.messages(box)
    assert list(after.values()) == [stored.read_bytes()]
    assert stored.stat().st_uid == owner.pw_uid
    assert "Error" not in dovecot.log_text(), dovecot.log_text()
    assert os.path.exists(box / "dovecot-uidlist")
