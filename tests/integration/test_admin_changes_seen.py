"""`hato user` and `hato key` in their own processes, against the real `hato serve` whose
answers are kept under the databases' stamps (boot/dbcache.py, boot/stampwatch.py): each
change is seen by the server's next transaction. The database files are first made to look
old, so the server trusts and keeps its answers: a change it failed to notice would be
answered from memory."""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from peers import maildir
from peers.hato import HatoServer, hato_binary
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import make_cert

SETUP = MailSetup(domains=(DomainSetup("example.test", users=("alice",)),))
MESSAGE = b"From: a@remote.test\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n"


def _age(data_dir: Path) -> None:
    """Make the user and key databases look a minute old (nothing wrote them lately)."""
    then = time.time() - 60
    for name in ("users.db", "users.db-wal", "keys.db", "keys.db-wal"):
        if (data_dir / name).exists():
            os.utime(data_dir / name, (then, then))


def _rcpt(hato: HatoServer, to: str) -> int:
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail("a@remote.test")
        code, _ = client.rcpt(to)
        return code


def _send(hato: HatoServer, to: str, subject: str) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=30) as client:
        message = MESSAGE.replace(b"{subject}", subject.encode())
        assert client.sendmail("a@remote.test", [to], message) == {}


def test_users_added_and_removed_and_a_key_imported_are_seen_by_the_next_transaction(
    workdir: Path,
) -> None:
    hato = HatoServer(workdir / "data", SETUP)
    hato.start()
    try:
        _age(hato.data_dir)
        assert _rcpt(hato, "bob@example.test") == 550  # kept: bob is no account
        assert _rcpt(hato, "bob@example.test") == 550
        added = subprocess.run(
            [hato_binary(), "user", "add", "bob@example.test", "--config", str(hato.config)],
            input="a long enough passphrase for bob\n", capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        _send(hato, "bob@example.test", "to-bob")
        (to_bob,) = maildir.wait_for_count(hato.mailbox("bob", "example.test"), 1, 15)
        assert to_bob.read_bytes().endswith(b"body to-bob\r\n")

        _age(hato.data_dir)
        _send(hato, "alice@example.test", "plain")  # alice has no key: kept so
        (plain,) = maildir.wait_for_count(hato.mailbox("alice", "example.test"), 1, 15)
        cert = hato.work / "alice.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        cert.write_bytes(make_cert(key, "alice@example.test").cert_pem)
        imported = hato.hato("key", "import", "alice@example.test", str(cert))
        assert imported.returncode == 0, imported.stderr
        _send(hato, "alice@example.test", "secret-subject-zq9")
        box = hato.mailbox("alice", "example.test")
        stored = maildir.wait_for_count(box, 2, 15)
        latest = [m for m in stored if m != plain]
        assert len(latest) == 1
        assert b"application/pkcs7-mime" in latest[0].read_bytes()
        assert b"secret-subject-zq9" not in latest[0].read_bytes().split(b"\r\n\r\n", 1)[1]

        _age(hato.data_dir)
        assert _rcpt(hato, "bob@example.test") == 250  # kept: bob is an account
        removed = hato.hato("user", "remove", "bob@example.test")
        assert removed.returncode == 0, removed.stderr
        assert _rcpt(hato, "bob@example.test") == 550
    finally:
        hato.stop()
