"""Encryption at rest end to end (issue 6): the real server stores mail for a user with an
OpenPGP or S/MIME key encrypted, GnuPG and OpenSSL open it, and no plaintext of it is anywhere in
the data directory (spool, Maildir, SQLite, logs) — after a crash in the middle too."""

from __future__ import annotations

import smtplib
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from peers import maildir
from peers.hato import HatoServer
from peers.net import free_port
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import Gpg, make_cert, need


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HatoServer]:
    setup = MailSetup(domains=(DomainSetup("example.org", users=("bob", "carol", "dave")),))
    hato = HatoServer(tmp_path / "data", setup)
    hato.start()
    yield hato
    hato.stop()


def _send(server: HatoServer, rcpts: list[str], marker: str) -> None:
    message = (
        f"From: <alice@example.net>\r\nTo: <{rcpts[0]}>\r\nSubject: secret {marker}\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nThe plan is {marker}.\r\n"
    ).encode()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.net", rcpts, message)


def _grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _wait_files(box: Path, count: int) -> list[Path]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        files = sorted((box / "new").glob("*")) if (box / "new").exists() else []
        if len(files) >= count:
            return files
        time.sleep(0.1)
    raise AssertionError(f"{count} message(s) not delivered to {box}")


def test_openpgp_user_gets_mail_only_gnupg_can_read(server: HatoServer, gpg: Gpg) -> None:
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    marker = uuid.uuid4().hex
    _send(server, ["bob@example.org"], marker)
    (stored,) = _wait_files(server.mailbox("bob", "example.org"), 1)
    raw = stored.read_bytes()
    assert b"multipart/encrypted" in raw and b"Subject: ..." in raw
    plain = gpg.run("--decrypt", input=raw.split(b"\r\n\r\n", 1)[1])
    assert f"The plan is {marker}.".encode() in plain
    assert f"Subject: secret {marker}".encode() in plain  # the real Subject moved inside
    assert _grep(server.data_dir, marker.encode()) == []  # spool, SQLite, Maildir
    assert marker.encode() not in server.log.read_bytes()


def test_a_recipient_without_a_key_is_unaffected(server: HatoServer, gpg: Gpg) -> None:
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    marker = uuid.uuid4().hex
    _send(server, ["bob@example.org", "dave@example.org"], marker)
    (for_bob,) = _wait_files(server.mailbox("bob", "example.org"), 1)
    (for_dave,) = _wait_files(server.mailbox("dave", "example.org"), 1)
    assert marker.encode() not in for_bob.read_bytes()
    assert f"The plan is {marker}.".encode() in for_dave.read_bytes()


def test_already_encrypted_mail_passes_through_untouched(server: HatoServer, gpg: Gpg) -> None:
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    armored = gpg.run(
        "--armor", "--encrypt", "--recipient", "bob@example.org", input=b"already secret\r\n"
    )
    body = (
        b"From: <alice@example.net>\r\nTo: <bob@example.org>\r\nSubject: pgp\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; "
        b'protocol="application/pgp-encrypted"; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        + armored.replace(b"\n", b"\r\n")
        + b"\r\n--b1--\r\n"
    )
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.sendmail("alice@example.net", ["bob@example.org"], body)
    (stored,) = _wait_files(server.mailbox("bob", "example.org"), 1)
    assert stored.read_bytes().endswith(body)  # byte for byte after our trace headers


def test_smime_user_gets_mail_openssl_can_read(server: HatoServer, tmp_path: Path) -> None:
    need("openssl")
    smime = make_cert(ec.generate_private_key(ec.SECP256R1()), "carol@example.org")
    server.import_key("carol@example.org", smime.cert_pem, "carol.pem")
    marker = uuid.uuid4().hex
    _send(server, ["carol@example.org"], marker)
    (stored,) = _wait_files(server.mailbox("carol", "example.org"), 1)
    raw = stored.read_bytes()
    assert b"application/pkcs7-mime" in raw and marker.encode() not in raw
    (tmp_path / "key.pem").write_bytes(smime.key_pem)
    (tmp_path / "cert.pem").write_bytes(smime.cert_pem)
    # Our added trace headers (Return-Path, Delivered-To, Received) sit above the S/MIME
    # message; openssl reads the MIME entity from the headers it knows.
    opened = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inkey",
            str(tmp_path / "key.pem"),
            "-recip",
            str(tmp_path / "cert.pem"),
        ],
        input=raw,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert f"The plan is {marker}.".encode() in opened
    assert _grep(server.data_dir, marker.encode()) == []


def test_crash_between_accept_and_delivery_leaves_no_plaintext(
    server: HatoServer, gpg: Gpg
) -> None:
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    marker = uuid.uuid4().hex
    _send(server, ["bob@example.org"], marker)
    server.kill()  # SIGKILL: the message may still be in the queue, never in the clear
    assert _grep(server.data_dir, marker.encode()) == []
    server.start()
    (stored,) = _wait_files(server.mailbox("bob", "example.org"), 1)
    assert marker.encode() in gpg.run(
        "--decrypt", input=stored.read_bytes().split(b"\r\n\r\n", 1)[1]
    )
    assert _grep(server.data_dir, marker.encode()) == []


class WkdHato(HatoServer):
    def __init__(self, data_dir: Path, setup: MailSetup, port: int) -> None:
        super().__init__(data_dir, setup)
        self.wkd_port = port

    def _config_text(self) -> str:
        return super()._config_text() + f'\n[wkd]\naddress = "127.0.0.1:{self.wkd_port}"\n'


def test_wkd_serves_the_key_at_the_url_gnupg_computes(
    tmp_path: Path, gpg: Gpg, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wks = need("gpg-wks-client")
    setup = MailSetup(domains=(DomainSetup("example.org", users=("bob",)),))
    server = WkdHato(tmp_path / "data", setup, free_port())
    server.start()
    try:
        server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
        url = subprocess.run(
            [wks, "--print-wkd-url", "bob@example.org"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        parsed = urllib.parse.urlsplit(url)  # https://openpgpkey.example.org/.well-known/...
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.wkd_port}{parsed.path}?{parsed.query}",
            headers={"Host": parsed.netloc},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            key = answer.read()
        assert answer.status == 200 and key
        fresh = tmp_path_factory.mktemp("gnupg-fresh")
        fresh.chmod(0o700)
        imported = Gpg(fresh).run("--import", input=key)
        assert imported is not None
        listing = Gpg(fresh).run("--list-keys", "bob@example.org").decode()
        assert "bob@example.org" in listing
    finally:
        server.stop()


def _at_data(smtp: smtplib.SMTP) -> None:
    """alice@example.net's transaction to bob@example.org, up to DATA's 354: the message's
    octets are the caller's to send."""
    smtp.ehlo("client.example.net")
    assert smtp.mail("alice@example.net")[0] == 250
    assert smtp.rcpt("bob@example.org")[0] == 250
    smtp.putcmd("data")
    assert smtp.getreply()[0] == 354


@pytest.mark.parametrize("padding", [0, 300_000])  # in memory; spooled, the helper process
def test_a_key_imported_while_the_message_comes_gets_only_ciphertext(
    server: HatoServer, gpg: Gpg, padding: int
) -> None:
    # RCPT TO found no key for bob (the message is received in the clear: in memory, or a
    # big one in its spool file); bob imports one before the final dot: what is stored for
    # him is encrypted to it, and the plaintext body is gone.
    marker = uuid.uuid4().hex
    head = (
        f"From: <alice@example.net>\r\nTo: <bob@example.org>\r\nSubject: secret {marker}\r\n"
        f"\r\nThe plan is {marker}.\r\n" + "padding line\r\n" * (padding // 14)
    ).encode()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        _at_data(smtp)
        smtp.send(head)
        server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
        smtp.send(b"The rest.\r\n.\r\n")
        assert smtp.getreply()[0] == 250
    (stored,) = _wait_files(server.mailbox("bob", "example.org"), 1)
    raw = stored.read_bytes()
    assert marker.encode() not in raw
    assert f"The plan is {marker}.".encode() in gpg.run(
        "--decrypt", input=raw.split(b"\r\n\r\n", 1)[1]
    )
    assert _grep(server.data_dir, marker.encode()) == []  # spool, SQLite, Maildir
    assert marker.encode() not in server.log.read_bytes()


def test_a_key_imported_under_the_other_form_of_an_idn_domain_encrypts(tmp_path: Path) -> None:
    # The domain is configured as bücher.example; mail comes for its A-label form (as an
    # ASCII client writes it), and the key was imported under that form too: both name the
    # same mailbox, so the key is bob's, whatever form the import or the mail used.
    need("gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = Gpg(home)
    gpg.run("--quick-gen-key", "Bob <bob@xn--bcher-kva.example>", "future-default", "default")
    setup = MailSetup(domains=(DomainSetup("bücher.example", users=("bob",)),))
    hato = HatoServer(tmp_path / "data", setup)
    hato.start()
    try:
        hato.import_key(
            "bob@xn--bcher-kva.example", gpg.export("bob@xn--bcher-kva.example"), "bob.asc"
        )
        marker = uuid.uuid4().hex
        _send(hato, ["bob@xn--bcher-kva.example"], marker)
        (stored,) = _wait_files(hato.mailbox("bob", "bücher.example"), 1)
        raw = stored.read_bytes()
        assert marker.encode() not in raw
        opened = gpg.run("--decrypt", input=raw.split(b"\r\n\r\n", 1)[1])
        assert f"The plan is {marker}.".encode() in opened
        assert _grep(hato.data_dir, marker.encode()) == []
    finally:
        hato.stop()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_a_crash_writes_no_core_dump_holding_a_keyed_users_mail(
    server: HatoServer, gpg: Gpg
) -> None:
    # A core dump is the server's memory on disk: the message being received (its header
    # section, in the clear before it is encrypted) and the scratch files' keys. `hato serve`
    # turns core dumps off for itself and every process it starts, whatever limit it inherits.
    import resource
    import signal

    server.stop()
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # as a system that keeps cores
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    assert server.proc is not None
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    (line,) = [ln for ln in limits.splitlines() if ln.startswith("Max core file size")]
    assert line.split()[4:6] == ["0", "0"], line
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    marker = uuid.uuid4().hex
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        _at_data(smtp)
        smtp.send(f"Subject: secret {marker}\r\n\r\nThe plan is {marker}.\r\n".encode() * 50)
        server.proc.send_signal(signal.SIGSEGV)
        server.proc.wait(timeout=30)
    assert _grep(server.work, marker.encode()) == []  # no core file (core_pattern "core")
    assert _grep(server.data_dir, marker.encode()) == []


def test_a_revoked_key_uploaded_again_is_used_no_more(server: HatoServer, tmp_path: Path) -> None:
    # bob's private key was stolen: he uploads his revocation. No mail is encrypted to that
    # key any more, and none is stored in the clear instead: under the default policy his
    # mail waits (450 4.7.5) until he imports a new key.
    need("gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = Gpg(home)
    gpg.run("--quick-gen-key", "Bob <bob@example.org>", "future-default", "default")
    server.import_key("bob@example.org", gpg.export("bob@example.org"), "bob.asc")
    fingerprint = gpg.fingerprint("bob@example.org")
    made = (home / "openpgp-revocs.d" / f"{fingerprint}.rev").read_bytes()
    gpg.run("--import", input=made.replace(b"\n:-----BEGIN", b"\n-----BEGIN"))
    (server.work / "revoked.asc").write_bytes(gpg.export("bob@example.org"))
    done = server.hato("key", "import", "bob@example.org", str(server.work / "revoked.asc"))
    assert done.returncode == 0, done.stderr
    assert "is revoked: no mail is encrypted to it" in done.stdout
    assert "mail for bob@example.org is: defer" in done.stdout
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        assert smtp.mail("alice@example.net")[0] == 250
        code, text = smtp.rcpt("bob@example.org")
        assert (code, text[:5]) == (450, b"4.7.5")
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
