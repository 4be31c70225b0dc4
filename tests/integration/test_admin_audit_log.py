"""Every change an admin makes with `hato user`, `hato key` and `hato dkim` is one `admin-*`
log line naming the action, its object and the uid that ran the command: in the running
server's log (through its control socket, hato.cli.audit), or on the command's stderr with the
server stopped; never the password or the key. `hato reload`, which needs the server, is
logged by it with the uid of the control socket's peer."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from peers.hato import HatoServer, hato_binary
from peers.server import DomainSetup, MailSetup

from kit.cryptokeys import make_cert

SETUP = MailSetup(domains=(DomainSetup("example.test", users=("alice",)),))
PASSWORD = "audit-secret-pw-7Qx4-Lm2v"
NEW_PASSWORD = "audit-other-pw-9Kd3-Wz8r"


def _hato(server: HatoServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hato_binary(), *args, "--config", str(server.config)],
        input=stdin, capture_output=True, text=True, cwd=server.work,
        env={**os.environ, "HATO_HOME": str(server.data_dir)}, timeout=60, check=False,
    )  # fmt: skip


def _changes(server: HatoServer) -> list[tuple[subprocess.CompletedProcess[str], str, bytes]]:
    """Each change made, the log line it must give, and its secret (the log must not have)."""
    cert = server.work / "bob.pem"
    pem = make_cert(ec.generate_private_key(ec.SECP256R1()), "bob@example.test").cert_pem
    cert.write_bytes(pem)
    me = os.getuid()
    added = _hato(server, "user", "add", "bob@example.test", stdin=PASSWORD + "\n")
    assert added.stdout.startswith("added bob@example.test (in "), added.stderr  # unchanged
    changed = _hato(server, "user", "passwd", "bob@example.test", stdin=NEW_PASSWORD + "\n")
    assert changed.stdout.startswith("changed the password of bob@example.test"), changed.stderr
    imported = _hato(server, "key", "import", "bob@example.test", str(cert))
    assert imported.stdout.startswith("imported the smime key "), imported.stderr
    fingerprint = imported.stdout.split()[4]
    key_removed = _hato(server, "key", "remove", "bob@example.test")
    assert key_removed.stdout.startswith("removed the key of bob@example.test"), key_removed.stderr
    removed = _hato(server, "user", "remove", "bob@example.test")
    assert removed.stdout.startswith("removed bob@example.test (from "), removed.stderr
    keygen = _hato(server, "dkim", "keygen", "example.test")
    assert keygen.stdout.startswith("wrote "), keygen.stderr
    key_file = keygen.stdout.splitlines()[0].removeprefix("wrote ")
    private = b"".join(Path(key_file).read_bytes().splitlines()[1:-1])
    body = b"".join(pem.splitlines()[1:-1])  # the certificate's base64 is not to be logged
    return [
        (added, f"event=admin-user-add user=bob@example.test uid={me}", PASSWORD.encode()),
        (changed, f"event=admin-user-passwd user=bob@example.test uid={me}", b"audit-other"),
        (
            imported,
            f"event=admin-key-import user=bob@example.test kind=smime "
            f"fingerprint={fingerprint} uid={me}",
            body[:40],
        ),
        (key_removed, f"event=admin-key-remove user=bob@example.test uid={me}", b"-----"),
        (removed, f"event=admin-user-remove user=bob@example.test uid={me}", b"audit-secret"),
        (
            keygen,
            "event=admin-dkim-keygen domain=example.test selector=hato algorithm=rsa "
            f"path={key_file} replaced=False uid={me}",
            private[:40],
        ),
    ]


def test_changes_are_logged_in_the_running_server_s_log(tmp_path: Path) -> None:
    server = HatoServer(tmp_path / "data", SETUP)
    server.start()
    try:
        changes = _changes(server)
        for done, line, _secret in changes:
            assert "uid=" not in done.stderr  # the server logged it, not the command
            assert server.wait_for_log(re.escape(line) + "$"), line
        reloaded = _hato(server, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        line = f"event=admin-reload applied=True uid={os.getuid()}"
        assert server.wait_for_log(re.escape(line) + "$"), line
    finally:
        server.stop()
    log = server.log_text().encode()
    for _done, _line, secret in changes:
        assert secret not in log
    assert PASSWORD.encode() not in log and NEW_PASSWORD.encode() not in log


def test_changes_are_logged_on_stderr_with_the_server_stopped(tmp_path: Path) -> None:
    server = HatoServer(tmp_path / "data", SETUP)
    server.start()
    server.stop()  # made and stopped: the commands act on the databases themselves
    for done, line, secret in _changes(server):
        assert done.returncode == 0, done.stderr
        assert line in done.stderr
        assert secret.decode() not in done.stderr + done.stdout
