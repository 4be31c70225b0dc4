"""[tls] acme (issue 18): Hato orders its certificate from a real ACME server, Pebble (Let's
Encrypt's test server), answering the http-01 challenge itself; the submission listener serves
the issued chain, and `hato tls renew` swaps in a new one without dropping an open session."""

from __future__ import annotations

import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from peers.hato import HatoServer
from peers.net import LOOPBACK, free_port
from peers.server import AcmeSetup, DomainSetup, MailSetup
from peers.tls import make_test_ca

from dnsserver import DnsTestServer

STARTTLS = ("-starttls", "smtp", "-servername", "hato.test")


@pytest.fixture
def pebble(
    require_peer: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[str, Path, int, int]]:
    """A running Pebble: (directory URL, the CA file of its HTTPS, the ports it validates
    http-01 and tls-alpn-01 on)."""
    binary = require_peer("pebble")
    ca = make_test_ca(tmp_path / "pebble-https")  # Pebble's own HTTPS certificate
    port, http_port, tls_port = free_port(), free_port(), free_port()
    config = tmp_path / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{LOOPBACK}:{port}",
                    "managementListenAddress": f"{LOOPBACK}:{free_port()}",
                    "certificate": str(ca.server_cert),
                    "privateKey": str(ca.server_key),
                    "httpPort": http_port,  # where it fetches http-01 answers: Hato's
                    "tlsPort": tls_port,  # where it connects for tls-alpn-01: Hato's
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    # The names to validate resolve to loopback through the test DNS server.
    dns = DnsTestServer(
        {"hato.test": {"A": ["127.0.0.1"]}, "mta-sts.example.org": {"A": ["127.0.0.1"]}}
    )
    dns.start()
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",  # every order is validated again
    }
    log = (tmp_path / "pebble.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-config", str(config), "-dnsserver", dns.nameserver],
        stdout=log,
        stderr=log,
        env=env,
        cwd=tmp_path,
    )
    try:
        _wait_for_port(port, proc)
        yield f"https://{LOOPBACK}:{port}/dir", ca.ca_cert, http_port, tls_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        dns.stop()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "pebble exited"
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "pebble does not listen"
            time.sleep(0.05)


class WebHato(HatoServer):
    """Hato with its web endpoint on HTTPS: mta-sts.example.org is on the certificate too."""

    def __init__(self, data_dir: Path, setup: MailSetup) -> None:
        super().__init__(data_dir, setup)
        self.web_port = self.own_port("web_port")

    def _config_text(self) -> str:
        web = f'\n[wkd]\naddress = "{LOOPBACK}:{self.web_port}"\nhttps = true\n'
        return super()._config_text() + web


def _no_check() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only looked at: s_client checks the issuer
    return context


def _smtp_cert(port: int) -> x509.Certificate:
    """The certificate a new STARTTLS handshake on `port` sees."""
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
        client.starttls(context=_no_check())
        tls = client.sock
        assert isinstance(tls, ssl.SSLSocket)
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _https_cert(port: int) -> x509.Certificate:
    """The certificate a new handshake with the web endpoint sees."""
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    with _no_check().wrap_socket(raw, server_hostname="mta-sts.example.org") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _names(cert: x509.Certificate) -> set[str]:
    return set(
        cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )


def test_pebble_issues_the_certificate_and_renewal_keeps_open_sessions(
    tmp_path: Path, pebble: tuple[str, Path, int, int], require_peer: Callable[[str], str]
) -> None:
    directory, ca_file, http_port, _ = pebble
    setup = MailSetup(
        domains=(DomainSetup("example.org", users=("alice",)),),
        submission=True,
        acme=AcmeSetup("postmaster@example.org", directory, ca_file, f"{LOOPBACK}:{http_port}"),
    )
    server = WebHato(tmp_path / "data", setup)
    server.start()
    try:
        assert server.wait_for_log(r"event=acme-certificate", timeout=60), server.log_text()
        shown = _s_client(require_peer("openssl"), server.submission_port)
        assert "Pebble Intermediate CA" in shown, shown  # the chain Pebble issued
        key = tmp_path / "data" / "acme" / "key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        first = _smtp_cert(server.submission_port)
        assert _names(first) == {"hato.test", "mta-sts.example.org"}
        assert _https_cert(server.web_port) == first  # the web endpoint serves it too

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(LOOPBACK, server.submission_port, timeout=10) as open_session:
            open_session.starttls(context=context)
            assert open_session.ehlo()[0] == 250
            renewed = server.hato("tls", "renew")
            assert renewed.returncode == 0, renewed.stderr
            second = _smtp_cert(server.submission_port)
            assert second.serial_number != first.serial_number
            assert format(second.serial_number, "x") in renewed.stdout
            serial = format(second.serial_number, "x")
            line = f"event=admin-tls-renew serial={serial} not_after=\\S+ uid={os.getuid()}$"
            assert server.wait_for_log(line), line  # the server's, with the asking uid
            assert _https_cert(server.web_port) == second
            # The session begun with the old certificate goes on.
            assert open_session.ehlo()[0] == 250
            assert open_session.noop()[0] == 250
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def _s_client(openssl: str, port: int) -> str:
    return subprocess.run(
        [openssl, "s_client", "-connect", f"{LOOPBACK}:{port}", *STARTTLS],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


def test_tls_alpn_01_answers_on_its_own_port(
    tmp_path: Path, pebble: tuple[str, Path, int, int], require_peer: Callable[[str], str]
) -> None:
    """RFC 8737: with challenge = "tls-alpn-01" Pebble validates over TLS to tls_address, and
    the http-01 port is not served at all."""
    directory, ca_file, http_port, tls_port = pebble
    acme = AcmeSetup(
        "postmaster@example.org",
        directory,
        ca_file,
        f"{LOOPBACK}:{http_port}",
        challenge="tls-alpn-01",
        tls_address=f"{LOOPBACK}:{tls_port}",
    )
    setup = MailSetup(domains=(DomainSetup("example.org"),), submission=True, acme=acme)
    server = HatoServer(tmp_path / "data", setup)
    server.start()
    try:
        assert server.wait_for_log(r"event=acme-certificate", timeout=60), server.log_text()
        shown = _s_client(require_peer("openssl"), server.submission_port)
        assert "Pebble Intermediate CA" in shown, shown
        # The http-01 listener is never started (its port is not probed: a free port picked
        # at the start may belong to another test by now).
        assert re.search(r"event=listening role=acme-tls-alpn-01 ", server.log_text())
        assert "role=acme-http-01" not in server.log_text()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
