"""A milter's changes and encryption at rest (issue 6), end to end against Sendmail's own
libmilter (peers/libmilter_filter.py) and gpg: for a recipient with an imported OpenPGP key,
what a milter adds to the header section (a field repeating the Subject), a new body, or a
keyed recipient it adds is stored only as ciphertext (no marker anywhere in the data directory
or the log, gpg opens the copy to it); a keyed recipient a milter adds to mail received in the
clear is not added (its plaintext is already on disk)."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator

import pytest
from peers import maildir
from peers.milters import LibMilter, MilteredHato

from kit.cryptokeys import Gpg

SENDER = "alice@sender.example"
KEYED = ("keyed", "other")  # other@dest.example: the recipient ADD-RCPT adds


@pytest.fixture(scope="module")
def hato(
    tmp_path_factory: pytest.TempPathFactory, libmilter: LibMilter, gpg: Gpg
) -> Iterator[MilteredHato]:
    server = MilteredHato(tmp_path_factory.mktemp("hato") / "data", [libmilter.address])
    server.start()
    try:
        for user in KEYED:
            address = f"{user}@dest.example"
            gpg.run("--quick-gen-key", f"{user} <{address}>", "future-default", "default", "never")
            server.import_key(address, gpg.export(address), f"{user}.asc")
        yield server
    finally:
        server.stop()


def _send(hato: MilteredHato, to: str, marker: str, words: str, padding: str = "") -> None:
    message = (
        f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: secret {marker}\r\n"
        f"Message-ID: <{uuid.uuid4()}@sender.example>\r\n\r\n{words} The plan is {marker}.\r\n"
        f"{padding}"
    ).encode()
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.sendmail(SENDER, [to], message)


def _opened(hato: MilteredHato, gpg: Gpg, user: str) -> bytes:
    """The one message in `user`'s Maildir, decrypted by gpg."""
    (path,) = maildir.wait_for_count(hato.mailbox(user, "dest.example"), 1, 20)
    stored = path.read_bytes()
    assert b"multipart/encrypted" in stored, stored[:2000]
    return gpg.run("--decrypt", input=stored.split(b"\r\n\r\n", 1)[1])


def _nowhere_in_clear(hato: MilteredHato, marker: str) -> None:
    found = [
        p for p in hato.data_dir.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()
    ]
    assert found == []  # spool, SQLite, Maildir
    assert marker not in hato.log_text()


def _clear(hato: MilteredHato, user: str) -> None:
    for path in maildir.messages(hato.mailbox(user, "dest.example")):
        path.unlink()


def test_a_field_a_milter_adds_is_encrypted_with_the_keyed_copy(
    hato: MilteredHato, gpg: Gpg
) -> None:
    _clear(hato, "keyed")
    marker = uuid.uuid4().hex
    _send(hato, "keyed@dest.example", marker, "ECHO-SUBJECT")
    opened = _opened(hato, gpg, "keyed")
    # The milter's field (SMFIR_ADDHEADER, no other edit) is inside the encrypted part.
    assert f"X-Libmilter-Subject: secret {marker}".encode() in opened, opened[:3000]
    assert b"X-Libmilter: seen" in opened
    _nowhere_in_clear(hato, marker)


def test_a_new_body_for_a_keyed_recipient_is_stored_only_as_ciphertext(
    hato: MilteredHato, gpg: Gpg
) -> None:
    _clear(hato, "keyed")
    marker = uuid.uuid4().hex
    _send(hato, "keyed@dest.example", marker, "ECHO-SUBJECT CHANGE-SUBJECT REPLACE-BODY")
    opened = _opened(hato, gpg, "keyed")
    assert b"replaced by libmilter" in opened and b"Subject: changed by libmilter" in opened
    assert f"X-Libmilter-Subject: secret {marker}".encode() in opened, opened[:3000]
    _nowhere_in_clear(hato, marker)


def test_a_big_new_body_for_a_keyed_recipient_is_spooled_encrypted_and_bounded(
    hato: MilteredHato, gpg: Gpg
) -> None:
    """SMFIR_REPLBODY in many pieces (libmilter's 65535 octets each) goes into encrypted
    scratch as it comes, never held whole; one past the message size limit (1 MiB here) is
    taken as the milter's failure: its default action, 451 4.3.0, nothing stored."""
    _clear(hato, "keyed")
    marker = uuid.uuid4().hex
    line = "a line of the body, long enough to make the message big...................\r\n"
    padding = line * 4_000  # 320 KB: the new body is 640 KB
    _send(hato, "keyed@dest.example", marker, "DOUBLE-BODY", padding)
    opened = _opened(hato, gpg, "keyed").replace(b"\r\n", b"\n")
    once = f"DOUBLE-BODY The plan is {marker}.\n{padding}".replace("\r\n", "\n").encode()
    assert opened.endswith(b"\n\n" + once + once)
    _nowhere_in_clear(hato, marker)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(hato, "keyed@dest.example", uuid.uuid4().hex, "DOUBLE-BODY", padding * 2)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (451, b"4.3.0")
    assert hato.wait_for_log(r"event=milter-unavailable .*new body over"), hato.log_text()[-2000:]


def test_a_keyed_recipient_a_milter_adds_gets_only_ciphertext(hato: MilteredHato, gpg: Gpg) -> None:
    _clear(hato, "keyed")
    _clear(hato, "other")
    marker = uuid.uuid4().hex
    _send(hato, "keyed@dest.example", marker, "ADD-RCPT")  # SMFIR_ADDRCPT other@dest.example
    for user in KEYED:
        assert f"The plan is {marker}.".encode() in _opened(hato, gpg, user)
    _nowhere_in_clear(hato, marker)


def test_a_keyed_recipient_is_not_added_to_mail_received_in_the_clear(
    hato: MilteredHato,
) -> None:
    _clear(hato, "other")
    marker = uuid.uuid4().hex
    _send(hato, "plain@dest.example", marker, "ADD-RCPT")
    (path,) = maildir.wait_for_count(hato.mailbox("plain", "dest.example"), 1, 20)
    assert marker.encode() in path.read_bytes()
    assert hato.wait_for_log(
        r'event=milter-envelope-change-ignored .*address=<other@dest.example> .*reason="the'
        r' recipient has a key"'
    ), hato.log_text()[-3000:]
    assert maildir.messages(hato.mailbox("other", "dest.example")) == []


def test_mail_held_before_its_recipient_imported_a_key_is_delivered_encrypted(
    hato: MilteredHato, gpg: Gpg
) -> None:
    """A milter's quarantine holds mail for late@ while late@ has no key (its plaintext copy is
    queued); late@ imports one; `hato queue release` then delivers only ciphertext into the
    Maildir (`hato key encrypt-existing` only sees what is already there)."""
    marker = uuid.uuid4().hex
    _send(hato, "late@dest.example", marker, "QUARANTINE")
    held = hato.wait_for_log(r"event=queued id=(\w+) .*held=True")
    assert held is not None, hato.log_text()[-2000:]
    address = "late@dest.example"
    gpg.run("--quick-gen-key", f"late <{address}>", "future-default", "default", "never")
    hato.import_key(address, gpg.export(address), "late.asc")
    released = hato.hato("queue", "release", held.group(1))
    assert released.returncode == 0, released
    assert f"The plan is {marker}.".encode() in _opened(hato, gpg, "late")
    found = [
        p for p in hato.mailboxes().rglob("*") if p.is_file() and marker.encode() in p.read_bytes()
    ]
    assert found == []
    assert hato.wait_for_log(r"event=queued-copy-encrypted "), hato.log_text()[-2000:]
