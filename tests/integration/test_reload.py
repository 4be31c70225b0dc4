"""SIGHUP (issue 7): the configuration and certificates are read again without dropping the
sessions in progress; a broken configuration is refused and the running one stays."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.hato import HatoServer
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.server import DomainSetup, MailSetup, TlsFiles
from peers.tls import TestCA

from dnsserver import DnsTestServer
from hato.server.tls import ensure_self_signed


def _hup(server: HatoServer, expect: str) -> None:
    assert server.proc is not None
    before = server.log_text().count(expect)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while server.log_text().count(expect) <= before:
        assert time.monotonic() < deadline, f"no {expect!r} in the log after SIGHUP"
        time.sleep(0.05)


def _cert_der(host: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.recv(1024)
        raw.sendall(b"EHLO c\r\n")
        raw.recv(4096)
        raw.sendall(b"STARTTLS\r\n")
        raw.recv(1024)
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_applies_a_new_domain_and_keeps_open_sessions(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path / "tls", "hato.test")
    setup = MailSetup(
        domains=(DomainSetup("example.org", users=("alice",)),),
        submission=True,
        tls=TlsFiles(cert, key),
    )
    server = HatoServer(tmp_path / "data", setup)
    server.start()
    try:
        open_session = smtplib.SMTP(server.host, server.port, timeout=30)
        open_session.ehlo("before")
        with (
            smtplib.SMTP(server.host, server.port, timeout=30) as smtp,
            pytest.raises(smtplib.SMTPRecipientsRefused),
        ):
            smtp.sendmail("a@example.net", ["x@new.test"], b"Subject: x\r\n\r\nx\r\n")
        first_cert = _cert_der(server.host, server.submission_port)

        # A broken file is refused whole; the running configuration stays.
        good = server.config.read_text()
        server.config.write_text(good + "\n[limits]\nmax_recipients = 10\n")
        _hup(server, "event=reload-refused")
        # The new configuration: one more domain, and a renewed certificate.
        server.config.write_text(good + '\n[[domain]]\nname = "new.test"\naccept_any = true\n')
        (tmp_path / "tls" / "selfsigned-cert.pem").unlink()
        (tmp_path / "tls" / "selfsigned-key.pem").unlink()
        ensure_self_signed(tmp_path / "tls", "hato.test")
        _hup(server, "event=reloaded")

        marker = "reload-1"
        message = f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhi\r\n".encode()
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.sendmail("a@example.net", ["x@new.test"], message)
        assert maildir.wait_for_marker(server.mailbox("x", "new.test"), marker)
        # The session opened before the reload is still there and works.
        assert open_session.noop()[0] == 250
        open_session.sendmail("a@example.net", ["alice@example.org"], message)
        open_session.quit()
        assert _cert_der(server.host, server.submission_port) != first_cert
    finally:
        server.stop()


class FarHato(HatoServer):
    """Another server, with a host name of its own (the same one would be a mail loop)."""

    def _config_text(self) -> str:
        return super()._config_text().replace('"hato.test"', '"mx.far.test"', 1)


def test_hato_reload_applies_a_new_transport_or_names_the_keys_that_need_a_restart(
    workdir: Path, test_ca: TestCA
) -> None:
    """Issue 13: after adding a [[transport]] and SIGHUP the log said `reloaded`, and the next
    message to that domain still bounced (550 5.1.2, the old routes). Now `hato reload` applies
    every changed key or none, and says which."""
    with DnsTestServer({}) as dns:  # far.test does not exist in DNS: only the transport routes it
        far = FarHato(
            workdir / "far", MailSetup(domains=(DomainSetup("far.test", accept_any=True),))
        )
        far.start()
        hato = OutboundHato(workdir / "data", test_ca, OutboundConfig(dns.nameserver))
        hato.start()
        try:
            good = hato.config.read_text()
            transport = f'\n[[transport]]\ndomain = "far.test"\nrelay = "127.0.0.1:{far.port}"\n'
            hato.config.write_text(good + transport)
            done = hato.hato("reload")
            assert (done.returncode, done.stderr) == (0, ""), done.stderr
            assert done.stdout == f"reloaded {hato.config}: changed transport\n"
            hato.submit(["u@far.test"], message("u@far.test", "reload-transport"))
            found = maildir.wait_for_marker(far.mailbox("u", "far.test"), "reload-transport")
            assert found, hato.log_text()[-3000:]

            # A key that needs a restart refuses the whole file: the new domain is not applied.
            hato.config.write_text(
                good + transport + '\n[[domain]]\nname = "new.test"\naccept_any = true\n'
            )
            text = hato.config.read_text().replace(
                'max_message_size = "1M"', 'max_message_size = "2M"'
            )
            hato.config.write_text(text)
            done = hato.hato("reload")
            assert done.returncode == 1
            assert "nothing of" in done.stderr
            assert "these keys need a restart: limits.max_message_size" in done.stderr
            assert hato.wait_for_log(r"event=reload-refused .*keys=limits\.max_message_size")
            assert "event=reloaded" not in hato.log_text().split("keys=limits.max_message_size")[-1]
            with (
                smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp,
                pytest.raises(smtplib.SMTPRecipientsRefused),
            ):
                smtp.sendmail("a@example.net", ["x@new.test"], b"Subject: x\r\n\r\nx\r\n")
        finally:
            hato.stop()
            far.stop()


def test_hato_reload_with_no_server_says_so(workdir: Path) -> None:
    server = HatoServer(workdir / "data")
    server._prepare()
    done = server.hato("reload")
    assert done.returncode == 75
    assert done.stderr.startswith("hato: no server answers on ")


def test_hato_reload_of_a_file_with_errors_asks_the_server_which_keeps_its_configuration(
    workdir: Path,
) -> None:
    """docs/operations.md: "the file has errors: nothing is applied, each problem is logged
    (event=reload-refused detail=...) and printed, exit 1". `hato reload` stopped at the file
    itself (exit 78) and never asked the server, whose log said nothing."""
    server = HatoServer(workdir / "data", MailSetup(domains=(DomainSetup("example.org", True),)))
    server.start()
    try:
        good = server.config.read_text()
        server.config.write_text(
            good.replace(
                '[[domain]]\nname = "example.org"', '[[domain]]\nname = "other.test"', 1
            ).replace("max_recipients = ", 'max_recipients = "lots"\n# ', 1)
        )
        done = server.hato("reload")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.startswith("hato: reload refused, nothing of "), done.stderr
        assert 'limits.max_recipients: expected an integer, at least 100, got "lots"' in (
            done.stderr
        )
        assert server.wait_for_log(r"event=reload-refused .*limits\.max_recipients")
        with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@client.test")[0] == 250
            assert smtp.rcpt("x@example.org")[0] == 250  # the configuration in force
            assert smtp.rcpt("x@other.test")[0] == 550
        server.config.write_text("[server\n")  # not TOML: no data_dir to find the server by
        done = server.hato("reload")
        assert done.returncode == 78, (done.stdout, done.stderr)
        assert "TOML syntax error" in done.stderr and "no server was asked" in done.stderr
    finally:
        server.stop()


def test_hato_reload_signs_with_a_dkim_key_made_while_running(tmp_path: Path) -> None:
    """`hato dkim keygen` then `hato reload`: the next message our users send is signed with
    the new key, no restart (boot/reload.py reads the DKIM keys again at every reload); a
    rollover to a new selector takes a reload too."""
    server = HatoServer(tmp_path / "data", MailSetup(domains=(DomainSetup("example.org"),)))
    server.start()
    try:

        def send(marker: str) -> bytes:
            text = (
                f"From: <root@example.org>\r\nTo: <postmaster@example.org>\r\nSubject: x\r\n"
                f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nhi\r\n"
            )
            done = server.sendmail(["-f", "root@example.org", "postmaster"], text.encode())
            assert done.returncode == 0, done.stderr
            box = server.mailbox("postmaster", "example.org")
            (found,) = maildir.wait_for_marker(box, marker)
            return found.read_bytes()

        assert b"DKIM-Signature:" not in send("before-key")
        keygen = server.hato("dkim", "keygen", "example.org")
        assert keygen.returncode == 0, keygen.stderr
        record = "".join(keygen.stdout.splitlines()[-1].split('"')[1::2]).encode()
        assert b"DKIM-Signature:" not in send("key-not-read-yet")
        reloaded = server.hato("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        signed = send("after-reload")
        assert b"d=example.org;" in signed and b"s=hato;" in signed, signed[:600]
        assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
        # A rollover: a key for a new selector, then dkim_selector set to it and a reload.
        keygen = server.hato("dkim", "keygen", "example.org", "--selector", "s2")
        assert keygen.returncode == 0, keygen.stderr
        assert 'set dkim_selector = "s2" in [[domain]] example.org and run' in keygen.stdout
        record = "".join(keygen.stdout.splitlines()[-2].split('"')[1::2]).encode()
        text = server.config.read_text()
        domain = '[[domain]]\nname = "example.org"\n'
        assert domain in text
        server.config.write_text(text.replace(domain, domain + 'dkim_selector = "s2"\n'))
        reloaded = server.hato("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        rolled = send("after-rollover")
        assert b"d=example.org;" in rolled and b"s=s2;" in rolled, rolled[:600]
        assert dkim.verify(rolled, dnsfunc=lambda name, timeout=5: record)
    finally:
        server.stop()
