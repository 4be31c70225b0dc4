"""TLS on the real server: STARTTLS injection (CVE-2011-0411 class), EHLO state reset after TLS,
protocol versions (openssl s_client), and the self-signed certificate of a set-up without [tls].

RFC 3207 §4.2: after TLS both sides discard what they knew; nothing sent before the handshake
may be acted on after it. RFC 8996 / RFC 8314 §4.1: TLS 1.2 at least.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer, hato_binary
from peers.net import RawSession, wait_for_banner, wait_for_listener
from peers.server import USER_PASSWORD, MakeServer, TlsFiles, submission_setup
from peers.tls import TestCA, make_test_ca

EHLO_OVER_TLS = b"250 AUTH PLAIN LOGIN SCRAM-SHA-256"


def _quiet(session: RawSession, wait: float = 0.5) -> bytes:
    """Whatever the server sends within `wait` seconds without being asked."""
    time.sleep(wait)
    session.sock.setblocking(False)
    try:
        return session.sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError):
        return b""
    finally:
        session.sock.setblocking(True)
        session.sock.settimeout(10)


@pytest.mark.parametrize(
    "injected",
    [b"RSET\r\n", b"MAIL FROM:<evil@client.test>\r\n", b"NOOP\r\nNOOP\r\nHELP\r\n"],
    ids=["RSET", "MAIL", "three"],
)
def test_bytes_pipelined_after_starttls_are_never_answered(
    hato_submission: HatoServer, test_ca: TestCA, injected: bytes
) -> None:
    server = hato_submission
    with RawSession(server.host, server.submission_port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        # One write: what a man in the middle appends to the client's STARTTLS.
        session.send(b"STARTTLS\r\n" + injected)
        assert session.reply() == (220, [b"220 2.0.0 Ready to start TLS"])
        assert session.pending == b"" and _quiet(session) == b"", "answered in plaintext"
        session.start_tls(test_ca.client_context())
        assert session.tls_version() in ("TLSv1.2", "TLSv1.3")
        # The first reply over TLS answers the new EHLO, never the injected command.
        code, lines = session.command(b"EHLO client.test")
        assert (code, lines[0], lines[-1]) == (250, b"250-hato.test", EHLO_OVER_TLS), lines
        assert _quiet(session) == b""
        assert (
            session.command(
                b"AUTH PLAIN AGFsaWNlQHVzZXJzLnRlc3QAaW50ZWdyYXRpb24tdGVzdC1wYXNzd29yZA=="
            )[0]
            == 235
        )
        # An injected MAIL FROM must not have opened a transaction: RCPT is out of sequence.
        assert session.command(b"RCPT TO:<bob@users.test>")[0] == 503
        assert session.command(b"NOOP") == (250, [b"250 2.0.0 Ok"])
    assert server.alive()


def test_ehlo_state_is_reset_after_starttls(hato_submission: HatoServer, test_ca: TestCA) -> None:
    server = hato_submission
    # On mx too: [tls] is configured, so mx offers STARTTLS (RFC 3207 §4.2 applies alike).
    with RawSession(server.host, server.port) as session:
        assert session.reply()[0] == 220
        code, lines = session.command(b"EHLO client.test")
        assert code == 250 and lines[-1] == b"250 STARTTLS", lines
        assert session.command(b"STARTTLS")[0] == 220
        session.start_tls(test_ca.client_context())
        # RFC 3207 §4.2: the server discards the EHLO it got before TLS.
        code, lines = session.command(b"MAIL FROM:<someone@client.test>")
        assert code == 503, lines
        code, lines = session.command(b"EHLO client.test")
        assert code == 250 and not any(b"STARTTLS" in line for line in lines), lines
        assert not any(b"AUTH" in line for line in lines), "mx must never offer AUTH"
        # RFC 3207 §4: STARTTLS again inside TLS is refused.
        assert session.command(b"STARTTLS")[0] // 100 == 5
        assert session.command(b"MAIL FROM:<someone@client.test>")[0] == 250


# ---- protocol versions ------------------------------------------------------------------------


def _s_client(openssl: str, port: int, ca: Path, *args: str) -> tuple[bool, str]:
    """Run `openssl s_client`; True when a cipher was negotiated (the handshake completed)."""
    done = subprocess.run(
        [
            openssl, "s_client", "-connect", f"127.0.0.1:{port}",
            "-servername", "hato.test", "-CAfile", str(ca), "-verify_return_error",
            # The client itself would refuse TLS 1.0/1.1 at OpenSSL 3's default security level;
            # level 0 makes sure any refusal we see comes from the server.
            "-cipher", "DEFAULT@SECLEVEL=0",
            *args,
        ],
        input="QUIT\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    output = done.stdout + done.stderr
    ciphers = [line for line in output.splitlines() if "Cipher is" in line]
    return bool(ciphers) and "Cipher is (NONE)" not in ciphers[0], output


@pytest.fixture
def old_tls_server(test_ca: TestCA) -> tuple[int, list[str]]:
    """A bare Python TLS server that still speaks TLS 1.0/1.1: proof that the openssl client
    on this machine can, so a refusal by Hato is Hato's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    context.load_cert_chain(test_ca.server_cert, test_ca.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    versions: list[str] = []

    def serve() -> None:
        with listener:
            for _ in range(2):
                conn, _ = listener.accept()
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        versions.append(str(tls.version()))
                except (ssl.SSLError, OSError):
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], versions


def test_openssl_client_can_speak_old_tls_here(
    old_tls_server: tuple[int, list[str]], test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    port, versions = old_tls_server
    openssl = require_peer("openssl")
    for flag in ("-tls1", "-tls1_1"):
        ok, output = _s_client(openssl, port, test_ca.ca_cert, flag)
        assert ok, output
    deadline = time.monotonic() + 30
    while len(versions) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert versions == ["TLSv1", "TLSv1.1"]


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("port_name", ["submission", "submissions"])
def test_tls_below_1_2_is_refused(
    hato_submission: HatoServer,
    test_ca: TestCA,
    require_peer: Callable[[str], str],
    flag: str,
    port_name: str,
) -> None:
    server = hato_submission
    if port_name == "submission":
        args: tuple[str, ...] = ("-starttls", "smtp", flag)
        port = server.submission_port
    else:
        args, port = (flag,), server.submissions_port
    ok, output = _s_client(require_peer("openssl"), port, test_ca.ca_cert, *args)
    # RFC 8996: TLS 1.0 and 1.1 MUST NOT be negotiated.
    assert ok is (flag in ("-tls1_2", "-tls1_3")), output
    if ok:
        assert "Verify return code: 0 (ok)" in output, output
    assert server.alive()


# ---- no [tls]: a self-signed certificate only for the embedded default ------------------------

EMBEDDED_PORTS = {"mx": 2525, "submission": 2587, "submissions": 2465}


def test_a_config_file_with_submission_but_no_tls_is_refused(workdir: Path) -> None:
    config = workdir / "hato.toml"
    config.write_text(
        '[server]\nhostname = "hato.test"\n'
        f'data_dir = "{workdir / "data"}"\n'
        '[[listener]]\nrole = "submission"\naddress = "127.0.0.1:1587"\n'
        '[[domain]]\nname = "users.test"\n'
    )
    done = subprocess.run(
        [hato_binary(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # `hato serve` refuses to start: sysexits.h EX_CONFIG, naming the listener and the fix.
    assert done.returncode == 78, done.stdout + done.stderr
    assert "tls" in done.stderr and "listener[0]" in done.stderr, done.stderr


@pytest.fixture
def embedded_default(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`hato serve` with no config file at all: the embedded default, on its fixed ports."""
    for role, port in EMBEDDED_PORTS.items():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} ({role} of the embedded default) is already in use")
    data = workdir / "data"
    log = (workdir / "hato.log").open("wb")
    proc = subprocess.Popen(
        [hato_binary(), "serve"],
        cwd=workdir,
        env={**os.environ, "HATO_HOME": str(data)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        for role in ("mx", "submission"):
            wait_for_banner(
                "127.0.0.1", EMBEDDED_PORTS[role], deadline, alive=lambda: proc.poll() is None
            )
        wait_for_listener("127.0.0.1", EMBEDDED_PORTS["submissions"], deadline)
        yield proc, data
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_the_embedded_default_serves_a_self_signed_certificate(
    embedded_default: tuple[subprocess.Popen[bytes], Path],
) -> None:
    _, data = embedded_default
    cert = data / "tls" / "selfsigned-cert.pem"
    assert cert.is_file()
    # The generated certificate is the one served (it verifies as its own trust anchor).
    context = ssl.create_default_context(cafile=str(cert))
    with RawSession(
        "127.0.0.1", EMBEDDED_PORTS["submissions"], tls=context, server_hostname="localhost"
    ) as session:
        assert session.reply()[0] == 220
        code, lines = session.command(b"EHLO client.test")
        assert code == 250 and lines[-1] == EHLO_OVER_TLS, lines
    with RawSession("127.0.0.1", EMBEDDED_PORTS["submission"]) as session:
        assert session.reply()[0] == 220
        code, lines = session.command(b"EHLO client.test")
        assert code == 250 and lines[-1] == b"250 STARTTLS", lines
        assert session.command(b"STARTTLS")[0] == 220
        session.start_tls(context, server_hostname="localhost")
        assert session.tls_version() in ("TLSv1.2", "TLSv1.3")


# ---- certificate renewal: new files + SIGHUP (or the file watcher), open sessions go on -------


def test_a_renewed_certificate_is_served_without_dropping_sessions(
    make_server: MakeServer, test_ca: TestCA, workdir: Path
) -> None:
    live = workdir / "live"
    live.mkdir()
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    shutil.copy(test_ca.server_cert, cert)
    shutil.copy(test_ca.server_key, key)
    server = make_server(submission_setup(TlsFiles(cert, key)))
    if not isinstance(server, HatoServer) or server.proc is None:
        pytest.skip("about Hato's own TLS")
    renewed = make_test_ca(workdir / "renewed")

    with RawSession(server.host, server.submissions_port, tls=test_ca.client_context()) as old:
        assert old.reply()[0] == 220
        assert old.command(b"EHLO client.test")[0] == 250
        # certbot's renewal: new files in place (each replaced atomically), then a reload.
        for source, target in ((renewed.server_key, key), (renewed.server_cert, cert)):
            shutil.copy(source, target.with_suffix(".new"))
            os.replace(target.with_suffix(".new"), target)
        server.proc.send_signal(signal.SIGHUP)

        deadline = time.monotonic() + 15
        while True:
            try:
                with RawSession(
                    server.host, server.submissions_port, tls=renewed.client_context()
                ) as new:
                    assert new.reply()[0] == 220
                break
            except ssl.SSLCertVerificationError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        # STARTTLS on 587 serves the new certificate too.
        with RawSession(server.host, server.submission_port) as new:
            assert new.reply()[0] == 220
            assert new.command(b"EHLO client.test")[0] == 250
            assert new.command(b"STARTTLS")[0] == 220
            new.start_tls(renewed.client_context())
            assert new.command(b"EHLO client.test")[0] == 250
        # The session opened before the reload is still alive and usable.
        assert old.command(b"NOOP") == (250, [b"250 2.0.0 Ok"])
        token = base64.b64encode(f"\0alice@users.test\0{USER_PASSWORD}".encode())
        assert old.command(b"AUTH PLAIN " + token)[0] == 235
    assert server.wait_for_log("event=tls-reloaded"), server.log_text()
