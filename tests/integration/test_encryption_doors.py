"""One way in (issue 11), end to end: mail that enters through the other doors than SMTP, the
real `hato-sendmail` (live on the control socket, and through the maildrop while the server is
down) and the server's own delivery status notifications, is stored for a user with an
imported OpenPGP or S/MIME key only as ciphertext: no marker from its body or Subject anywhere
in the data directory (spool, SQLite, Maildir) or the log, and gpg / openssl open the Maildir
copy to the original."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from peers import maildir
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.outbound_scripted import ScriptedPeer, Step
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import Gpg, Smime, make_cert, need

REFUSED = "550 5.1.1 no such user here"
GREYLIST = "451 4.7.1 Greylisted, come back later"


class DoorsHato(HatoServer):
    """example.org (bob, carol, dave); mail for remote.test goes to a scripted peer."""

    def __init__(self, data_dir: Path, peer_port: int) -> None:
        users = ("bob", "carol", "dave")
        domain = DomainSetup("example.org", users=users, aliases=(("robert", ("bob",)),))
        setup = MailSetup(domains=(domain,))
        super().__init__(data_dir, setup)
        self.peer_port = peer_port

    def _config_text(self) -> str:
        return (
            super()._config_text()
            + "\n[delivery]\nallow_loopback = true\nconnect_timeout = 5\nattempt_timeout = 20\n"
            + '\n[[transport]]\ndomain = "remote.test"\n'
            + f'relay = "{LOOPBACK}:{self.peer_port}"\ntls = "none"\n'
        )


@pytest.fixture
def smime() -> Smime:
    need("openssl")
    return make_cert(ec.generate_private_key(ec.SECP256R1()), "carol@example.org")


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    reply = getattr(request, "param", REFUSED)
    with ScriptedPeer(LOOPBACK, free_port(), [Step(rcpt=reply)]) as scripted:
        yield scripted


@pytest.fixture
def hato(workdir: Path, peer: ScriptedPeer, gpg: Gpg, smime: Smime) -> Iterator[DoorsHato]:
    server = DoorsHato(workdir / "data", peer.port)
    server.start()
    try:
        server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
        server.import_key("carol@example.org", smime.cert_pem, "carol.pem")
        yield server
    finally:
        server.stop()


def _message(marker: str, to: str) -> bytes:
    return (
        f"From: <bob@example.org>\nTo: <{to}>\nSubject: secret {marker}\n\nThe plan is {marker}.\n"
    ).encode()


def _grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _one(box: Path) -> bytes:
    (path,) = maildir.wait_for_count(box, 1, 20)
    return path.read_bytes()


def _gpg_open(gpg: Gpg, stored: bytes) -> bytes:
    assert b"multipart/encrypted" in stored
    return gpg.run("--decrypt", input=stored.split(b"\r\n\r\n", 1)[1])


def _openssl_open(tmp: Path, smime: Smime, stored: bytes) -> bytes:
    assert b"application/pkcs7-mime" in stored
    (tmp / "key.pem").write_bytes(smime.key_pem)
    (tmp / "cert.pem").write_bytes(smime.cert_pem)
    recip = ["-recip", str(tmp / "cert.pem")]
    return subprocess.run(
        ["openssl", "cms", "-decrypt", "-inkey", str(tmp / "key.pem"), *recip],
        input=stored,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def _assert_only_ciphertext(
    hato: DoorsHato, gpg: Gpg, smime: Smime, tmp: Path, marker: str
) -> None:
    for_bob = _one(hato.mailbox("bob", "example.org"))
    for_carol = _one(hato.mailbox("carol", "example.org"))
    for opened in (_gpg_open(gpg, for_bob), _openssl_open(tmp, smime, for_carol)):
        assert f"The plan is {marker}.".encode() in opened
        assert f"Subject: secret {marker}".encode() in opened
    assert _grep(hato.data_dir, marker.encode()) == []  # spool, SQLite, Maildir
    assert marker.encode() not in hato.log.read_bytes()


def test_hato_sendmail_to_keyed_users_stores_only_ciphertext(
    hato: DoorsHato, gpg: Gpg, smime: Smime, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    done = hato.sendmail(["bob", "carol"], _message(marker, "bob@example.org"))
    assert done.returncode == 0, done.stderr
    _assert_only_ciphertext(hato, gpg, smime, tmp_path, marker)


def test_the_maildrop_of_a_stopped_server_stores_only_ciphertext(
    hato: DoorsHato, gpg: Gpg, smime: Smime, tmp_path: Path
) -> None:
    hato.stop()
    marker = uuid.uuid4().hex
    done = hato.sendmail(["bob", "carol"], _message(marker, "bob@example.org"))
    assert done.returncode == 0, done.stderr
    assert [p for p in (hato.data_dir / "maildrop").iterdir() if not p.name.startswith(".")]
    hato.start()
    assert hato.wait_for_log(r"event=maildrop-picked-up ")
    _assert_only_ciphertext(hato, gpg, smime, tmp_path, marker)


def test_a_bounce_to_a_keyed_user_is_stored_only_as_ciphertext(
    hato: DoorsHato, peer: ScriptedPeer, gpg: Gpg
) -> None:
    marker = uuid.uuid4().hex
    # bob's mail to a next hop that refuses it: the DSN returns it whole to bob.
    done = hato.sendmail(
        ["-f", "bob@example.org", "nobody@remote.test"], _message(marker, "nobody@remote.test")
    )
    assert done.returncode == 0, done.stderr
    assert hato.wait_for_log(r"event=dsn-queued ")
    stored = _one(hato.mailbox("bob", "example.org"))
    assert marker.encode() not in stored
    opened = _gpg_open(gpg, stored)
    assert b"Final-Recipient: rfc822;nobody@remote.test" in opened
    assert REFUSED.encode() in opened
    assert f"The plan is {marker}.".encode() in opened  # the original came back inside
    assert len(peer.transactions) == 1
    # The copy bob sent out was in the spool in the clear (no key for nobody@remote.test);
    # the notice returning it to bob never was.
    assert not [p for p in _grep(hato.data_dir, marker.encode()) if "Maildir" in str(p)]


def test_a_bounce_to_an_alias_of_a_keyed_user_is_stored_only_as_ciphertext(
    hato: DoorsHato, gpg: Gpg
) -> None:
    marker = uuid.uuid4().hex
    # Mail from robert@ (an alias delivering to bob) that the next hop refuses: the DSN goes
    # to robert@, that is to bob's Maildir, encrypted to bob's key as SMTP mail to robert@ is.
    done = hato.sendmail(
        ["-f", "robert@example.org", "nobody@remote.test"], _message(marker, "nobody@remote.test")
    )
    assert done.returncode == 0, done.stderr
    assert hato.wait_for_log(r"event=dsn-queued ")
    stored = _one(hato.mailbox("bob", "example.org"))
    assert marker.encode() not in stored
    opened = _gpg_open(gpg, stored)
    assert b"Final-Recipient: rfc822;nobody@remote.test" in opened
    assert f"Subject: secret {marker}".encode() in opened  # the original came back inside
    assert f"The plan is {marker}.".encode() in opened
    # Only the copy robert@ sent out was ever in the clear (in the spool, for remote.test).
    assert not [p for p in _grep(hato.data_dir, marker.encode()) if "Maildir" in str(p)]
    assert not [p for p in _grep(hato.data_dir, marker.encode()) if p.suffix == ".db"]


@pytest.mark.parametrize("peer", [GREYLIST], indirect=True)
@pytest.mark.parametrize("sender", ["bob", "robert"])
def test_an_offline_queue_bounce_to_a_keyed_user_is_stored_only_as_ciphertext(
    hato: DoorsHato, peer: ScriptedPeer, gpg: Gpg, sender: str
) -> None:
    # As the server's bounce: a notice to robert@ (an alias delivering to bob) goes to bob's
    # mailbox too, encrypted to his key, never into a Maildir of its own in the clear.
    marker = uuid.uuid4().hex
    done = hato.sendmail(
        ["-f", f"{sender}@example.org", "later@remote.test"], _message(marker, "later@remote.test")
    )
    assert done.returncode == 0, done.stderr
    assert hato.wait_for_log(r"event=deferred ")
    hato.stop()
    bounced = hato.hato("queue", "bounce", "--domain", "remote.test")
    assert "removed from the queue" in bounced.stdout, bounced
    hato.start()
    stored = _one(hato.mailbox("bob", "example.org"))
    assert marker.encode() not in stored
    opened = _gpg_open(gpg, stored)
    assert b"Final-Recipient: rfc822;later@remote.test" in opened
    assert f"The plan is {marker}.".encode() in opened
    assert not hato.mailbox("robert", "example.org").exists()
    assert not [p for p in _grep(hato.data_dir, marker.encode()) if "mailboxes" in p.parts]
