"""`[server] user` started as root (issue 13): nothing the server needs after the privilege drop
is out of its user's reach; a problem is one line and exit 78, never a traceback after
`ready`, never 421s. And the CLI, run as root, leaves files the server's user can use."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from peers import maildir
from peers.hato import HatoServer, hato_binary
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles
from peers.tls import TestCA

from dnsserver import DnsTestServer, hato_dns
from hato.authcheck import DkimAlgorithm, generate_key
from kit.cryptokeys import make_cert

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

SENDMAIL = str(Path(hato_binary()).with_name("hato-sendmail"))


class DropHato(HatoServer):
    """Hato started as root with `user = "nobody"`; `server_extra` goes into [server], `extra`
    at the end; `env` is added to the environment of the server and the CLI."""

    def __init__(
        self, data_dir: Path, setup: MailSetup, server_extra: str, extra: str, env: dict[str, str]
    ) -> None:
        super().__init__(data_dir, setup)
        self.server_extra, self.extra, self.extra_env = server_extra, extra, env

    def _config_text(self) -> str:
        text = (
            super()
            ._config_text()
            .replace("[server]\n", '[server]\nuser = "nobody"\n' + self.server_extra, 1)
        )
        if "[dns]" in self.extra:  # SPF, DKIM and DMARC on port 25: they read the From: domain
            text = text.replace("inbound = false", "inbound = true")
        return text + self.extra

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.extra_env}


def _root_only(workdir: Path) -> Path:
    """A directory only root may enter, like /root or /etc/letsencrypt/archive."""
    secret = workdir / "root-only"
    secret.mkdir(mode=0o700)
    return secret


def _python_under_root(secret: Path) -> dict[str, str]:
    """The environment of a Python whose codecs live where only root can read: a copy of the
    standard library's `encodings` package first on the path (as with pyenv under /root)."""
    import encodings

    lib = secret / "lib"
    shutil.copytree(Path(encodings.__file__).parent, lib / "encodings")
    return {"PYTHONPATH": str(lib)}


def _nobody_data(workdir: Path) -> Path:
    nobody = pwd.getpwnam("nobody")
    data = workdir / "data"
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    return data


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer({}) as server:  # every name: NXDOMAIN (SPF none, DMARC none)
        yield server


def test_root_only_files_and_python_under_root_do_not_break_the_server(
    workdir: Path, test_ca: TestCA, dns: DnsTestServer
) -> None:
    secret = _root_only(workdir)
    cert, key = secret / "fullchain.pem", secret / "privkey.pem"
    shutil.copy(test_ca.server_cert, cert)
    shutil.copy(test_ca.server_key, key)
    key.chmod(0o600)
    password = secret / "smarthost-password"
    password.write_text("relay secret\n")
    password.chmod(0o600)
    run = workdir / "run"  # like /run/hato before systemd's RuntimeDirectory: root's
    run.mkdir(mode=0o755)
    setup = MailSetup(
        domains=(
            DomainSetup("example.org", accept_any=True),
            DomainSetup("users.test", users=("alice",)),
        ),
        submission=True,
        tls=TlsFiles(cert, key),
    )
    smarthost = (
        hato_dns(dns.nameserver)
        + '\n[smarthost]\nhost = "127.0.0.1"\nport = 2\nusername = "relay"\n'
        f'password_file = "{password}"\n'
        '\n[[transport]]\ndomain = "far.test"\nmx = true\n'
    )
    server = DropHato(
        _nobody_data(workdir),
        setup,
        f'submit_socket = "{run / "submit.sock"}"\n',
        smarthost,
        _python_under_root(secret),
    )
    server.start()
    try:
        # Port 25, a From: with an A-label (the IDNA and punycode codecs): 250, not 421.
        message = (
            b"From: <a@xn--bcher-kva.example>\r\nSubject: idn\r\n"
            + maildir.MARKER_HEADER
            + b": drop-mx\r\n\r\nhi\r\n"
        )
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.sendmail("a@xn--bcher-kva.example", ["u@example.org"], message)
        assert maildir.wait_for_marker(server.mailbox("u", "example.org"), "drop-mx")
        # Port 465: the implicit-TLS context was made from the root-only key before the drop.
        with smtplib.SMTP_SSL(
            server.host, server.submissions_port, context=test_ca.client_context(), timeout=30
        ) as smtp:
            smtp.login("alice@users.test", USER_PASSWORD)
            body = (
                b"From: <alice@users.test>\r\n" + maildir.MARKER_HEADER + b": drop-465\r\n\r\nx\r\n"
            )
            smtp.sendmail("alice@users.test", ["u@example.org"], body)
        assert maildir.wait_for_marker(server.mailbox("u", "example.org"), "drop-465")
        # The submission socket in root's directory was bound before the drop.
        done = subprocess.run(
            [SENDMAIL, "-i", "u@example.org"],
            input=maildir.MARKER_HEADER + b": drop-sendmail\n\nhi\n",
            capture_output=True,
            env={"HATO_CONTROL_SOCKET": str(run / "submit.sock"), "PATH": os.environ["PATH"]},
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert maildir.wait_for_marker(server.mailbox("u", "example.org"), "drop-sendmail")
        # A reload, as nobody: the root-only key and password file it does not read again do
        # not refuse it (their paths are unchanged).
        server.config.write_text(
            server.config.read_text() + '\n[[domain]]\nname = "new.test"\naccept_any = true\n'
        )
        reloaded = server.hato("reload")
        assert (reloaded.returncode, reloaded.stderr) == (0, ""), reloaded.stderr
        assert reloaded.stdout == f"reloaded {server.config}: changed domain\n"
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.sendmail(
                "a@example.net",
                ["x@new.test"],
                b"From: <a@example.net>\r\n" + maildir.MARKER_HEADER + b": new\r\n\r\n",
            )
        assert maildir.wait_for_marker(server.mailbox("x", "new.test"), "new")
        log = server.log_text()
        assert "Traceback" not in log and "session-error" not in log, log[-3000:]
        # check-config checks as nobody: the files it read as root are warnings, not problems.
        checked = server.hato("check-config")
        assert checked.returncode == 0, checked.stderr
        assert f"warning: tls.key: {key} is readable only before the privilege drop" in (
            checked.stderr
        )
        assert "warning: smarthost.password_file: " in checked.stderr
    finally:
        server.stop()


def _refused_at_start(server: DropHato) -> str:
    """`hato serve` of `server`'s configuration exits 78 with no traceback: its one line."""
    server._prepare()
    done = subprocess.run(
        [hato_binary(), "serve", "--config", str(server.config)],
        capture_output=True,
        text=True,
        env=server._env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    # Besides the log (on stderr too, without a log file): one line for the admin.
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("hato: ")]
    return line


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_the_user_cannot_read_is_one_line_and_exit_78(workdir: Path, workers: int) -> None:
    secret = _root_only(workdir)
    aliases = secret / "aliases"
    aliases.write_text("postmaster: u@example.org\n")
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = DropHato(
        _nobody_data(workdir),
        setup,
        f"workers = {workers}\n",
        f'\n[local]\naliases_file = "{aliases}"\n',
        {},
    )
    line = _refused_at_start(server)
    assert line.startswith(f"hato: local.aliases_file: {aliases} is not readable by user 'nobody'")
    checked = server.hato("check-config")
    assert checked.returncode == 1
    assert f"local.aliases_file: {aliases} is not readable by nobody" in checked.stderr


def test_a_mailbox_owner_the_server_user_cannot_give_files_to(workdir: Path) -> None:
    """[local] mailbox_owner needs root or that very user: with `user = "nobody"` serve stops
    with one line and 78, and check-config says so too (it said OK)."""
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    extra = '\n[local]\nmailbox_owner = "daemon"\n'
    server = DropHato(_nobody_data(workdir), setup, "", extra, {})
    line = _refused_at_start(server)
    fix = "cannot give mail files to 'daemon'; run hato as root (no [server] user)"
    assert line.startswith("hato: local.mailbox_owner: hato runs as uid") and fix in line, line
    checked = server.hato("check-config")
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    assert f"local.mailbox_owner: hato runs as uid {pwd.getpwnam('nobody').pw_uid}" in (
        checked.stderr
    )


def test_files_the_cli_makes_as_root_belong_to_the_server_user(
    workdir: Path, test_ca: TestCA
) -> None:
    nobody = pwd.getpwnam("nobody")
    setup = MailSetup(
        domains=(DomainSetup("users.test", users=("alice",)),),
        submission=True,
        tls=test_ca.tls_files(),
    )
    server = DropHato(_nobody_data(workdir), setup, "", "", {})
    server._prepare()  # `hato user add` as root
    keygen = server.hato("dkim", "keygen", "users.test")
    assert keygen.returncode == 0, keygen.stderr
    made = [server.data_dir / "users.db", server.data_dir / "dkim" / "users.test" / "hato.key"]
    made += [server.data_dir / "dkim", server.data_dir / "dkim" / "users.test"]
    assert {p: p.stat().st_uid for p in made} == dict.fromkeys(made, nobody.pw_uid)
    server.start()
    try:
        assert server.wait_for_log(r"event=dkim-key domain=users\.test")
        body = b"From: <alice@users.test>\r\n" + maildir.MARKER_HEADER + b": signed\r\n\r\nx\r\n"
        with smtplib.SMTP(server.host, server.submission_port, timeout=30) as smtp:
            smtp.starttls(context=test_ca.client_context())
            smtp.login("alice@users.test", USER_PASSWORD)
            smtp.sendmail("alice@users.test", ["alice@users.test"], body)
        (stored,) = maildir.wait_for_marker(server.mailbox("alice", "users.test"), "signed")
        assert b"DKIM-Signature: " in stored.read_bytes()
    finally:
        server.stop()


def test_a_dkim_key_the_server_cannot_read_is_loud(workdir: Path, test_ca: TestCA) -> None:
    setup = MailSetup(
        domains=(DomainSetup("users.test", users=("alice",)),),
        submission=True,
        tls=test_ca.tls_files(),
    )
    server = DropHato(_nobody_data(workdir), setup, "", "", {})
    server._prepare()
    key_dir = server.data_dir / "dkim" / "users.test"
    key_dir.mkdir(parents=True, mode=0o700)
    nobody = pwd.getpwnam("nobody")
    for directory in (key_dir.parent, key_dir):
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    # A key made by root by hand (or by `hato dkim keygen` as root, before issue 13): 0600 root.
    (key_dir / "hato.key").write_bytes(generate_key(DkimAlgorithm.ED25519_SHA256)[0])
    (key_dir / "hato.key").chmod(0o600)
    server.start()
    try:
        assert server.wait_for_log(r"event=dkim-key-unusable domain=users\.test")
        status = server.hato("status")
        assert status.returncode == 1
        assert "UNSIGNED" in status.stdout and str(key_dir / "hato.key") in status.stdout
    finally:
        server.stop()


def test_encrypt_existing_as_root_leaves_the_mail_to_the_server_user(workdir: Path) -> None:
    """Issue 13: `hato key encrypt-existing` as root left every message root:root 0600."""
    nobody = pwd.getpwnam("nobody")
    setup = MailSetup(domains=(DomainSetup("example.org", users=("carol",)),))
    server = DropHato(_nobody_data(workdir), setup, "", "", {})
    server.start()
    try:
        body = (
            b"From: <a@example.net>\r\nSubject: old mail\r\n"
            + maildir.MARKER_HEADER
            + b": to-encrypt\r\n\r\nhi\r\n"
        )
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.sendmail("a@example.net", ["carol@example.org"], body)
        box = server.mailbox("carol", "example.org")
        assert maildir.wait_for_marker(box, "to-encrypt")
        cert = workdir / "carol.pem"
        cert.write_bytes(make_cert(ec.generate_private_key(ec.SECP256R1())).cert_pem)
        imported = server.hato("key", "import", "carol@example.org", str(cert))
        assert imported.returncode == 0, imported.stderr
        done = server.hato("key", "encrypt-existing", "carol@example.org")
        assert done.returncode == 0, done.stderr
        assert "1 encrypted" in done.stdout
        made = [server.data_dir / "keys.db", *(p for p in box.rglob("*"))]
        assert {p: p.stat().st_uid for p in made} == dict.fromkeys(made, nobody.pw_uid)
        assert b"to-encrypt" not in b"".join(p.read_bytes() for p in box.rglob("*") if p.is_file())
    finally:
        server.stop()


def test_workers_start_as_the_server_user_on_a_new_data_dir(workdir: Path) -> None:
    """The supervisor makes the shared databases as root before forking: they are nobody's, so
    the workers (nobody after the drop) can use them (they stopped with a traceback)."""
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = DropHato(_nobody_data(workdir), setup, "workers = 2\n", "", {})
    server.start()
    try:
        body = b"From: <a@example.net>\r\n" + maildir.MARKER_HEADER + b": two-workers\r\n\r\nhi\r\n"
        try:
            with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
                smtp.sendmail("a@example.net", ["u@example.org"], body)
        except smtplib.SMTPException as exc:
            raise AssertionError(server.log_text()[-4000:]) from exc
        assert maildir.wait_for_marker(server.mailbox("u", "example.org"), "two-workers")
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()


def test_hato_reload_reaches_every_worker_after_the_drop(workdir: Path) -> None:
    """`hato reload` asks the control socket's worker, which asks the supervisor: a worker
    that is nobody may not signal the supervisor (root), and the reload failed with
    "queue store: [Errno 1] Operation not permitted" while the new domain stayed refused."""
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = DropHato(_nobody_data(workdir), setup, "workers = 2\n", "", {})
    server.start()
    try:
        server.config.write_text(
            server.config_text() + '\n[[domain]]\nname = "new.test"\naccept_any = true\n'
        )
        done = server.hato("reload")
        assert done.returncode == 0, (done.stdout, done.stderr, server.log_text()[-3000:])
        assert "new.test" not in done.stderr
        assert server.wait_for_log(r"(?s)(event=reloaded .*){2}"), server.log_text()[-3000:]
        for _ in range(4):  # whichever worker takes the connection
            with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
                smtp.ehlo()
                assert smtp.mail("a@example.net")[0] == 250
                assert smtp.rcpt("x@new.test")[0] == 250
        assert "control-failed" not in server.log_text()
    finally:
        server.stop()


def test_links_the_server_user_planted_do_not_make_root_write_or_give_away(
    workdir: Path,
) -> None:
    """The data directory is nobody's; whoever runs as nobody (a compromised worker) may plant
    links there before the next start. Root (the supervisor, and each worker before its drop)
    must not follow them: not empty another directory, not write or give away a system file."""
    data = _nobody_data(workdir)
    etc = workdir / "etc"
    etc.mkdir()
    passwd, shadow = etc / "passwd", etc / "shadow"
    passwd.write_text("root:x:0:0\n")
    shadow.write_text("root:$6$hash\n")
    (data / "figures").symlink_to(etc)  # root emptied it at start
    tls = data / "tls"
    tls.mkdir()
    os.chown(tls, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    (tls / "selfsigned-cert.pem").symlink_to(passwd)  # root wrote the certificate into it
    (tls / "selfsigned-key.tmp").symlink_to(shadow)  # root wrote the key into it
    setup = MailSetup(domains=(DomainSetup("example.org", accept_any=True),))
    server = DropHato(data, setup, "workers = 2\n", "", {})
    server.start()
    try:
        body = maildir.MARKER_HEADER + b": planted\r\n\r\nhi\r\n"
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.sendmail("a@example.net", ["u@example.org"], body)
        assert maildir.wait_for_marker(server.mailbox("u", "example.org"), "planted")
    finally:
        server.stop()
    assert sorted(p.name for p in etc.iterdir()) == ["passwd", "shadow"]
    assert passwd.read_text() == "root:x:0:0\n" and shadow.read_text() == "root:$6$hash\n"
    assert passwd.stat().st_uid == 0 and shadow.stat().st_uid == 0
