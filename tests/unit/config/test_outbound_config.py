"""[delivery], [[transport]] and [smarthost]: defaults, values, and errors naming the key."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hato.boot.outbound import verify_contexts
from hato.config import (
    ConfigError,
    SmarthostTls,
    TlsPolicyName,
)
from kit.config import parse


def problems(extra: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse(extra, tmp_path)
    return str(info.value)


def test_defaults(tmp_path: Path) -> None:
    settings = parse("", tmp_path)
    delivery = settings.delivery
    assert (delivery.mx_port, delivery.allow_loopback, delivery.mta_sts, delivery.dane) == (
        25,
        False,
        True,
        False,
    )
    assert delivery.max_connections_per_domain == 10 and delivery.idle_timeout == 5.0
    assert settings.transports == () and settings.smarthost is None


def test_full(tmp_path: Path) -> None:
    (tmp_path / "smarthost.pw").write_text("s3cret\n")
    settings = parse(
        """
[delivery]
mx_port = 2525
allow_loopback = true
dane = true
dane_nameservers = ["127.0.0.1:5353"]
mta_sts_connect_to = "127.0.0.1:8443"

[[transport]]
domain = "Example.COM"
relay = "[mx.internal]:2525"
tls = "verify"

[[transport]]
domain = "lists.example.org"
lmtp = "127.0.0.1:24"

[[transport]]
domain = "bank.test"
tls = "dane"

[smarthost]
host = "smtp.provider.net"
port = 465
tls = "implicit"
username = "me"
password_file = "smarthost.pw"
""",
        tmp_path,
    )
    assert settings.delivery.mx_port == 2525 and settings.delivery.dane_nameservers == (
        "127.0.0.1:5353",
    )
    assert settings.delivery.mta_sts_connect_to == "[127.0.0.1]:8443"
    relay, lmtp, bank = settings.transports
    assert (relay.domain, relay.relay, relay.tls) == (
        "example.com",
        "[mx.internal]:2525",
        TlsPolicyName.VERIFY,
    )
    assert lmtp.lmtp == "[127.0.0.1]:24" and bank.tls is TlsPolicyName.DANE and bank.relay is None
    smarthost = settings.smarthost
    assert smarthost is not None and smarthost.tls is SmarthostTls.IMPLICIT
    assert smarthost.secret() == "s3cret" and "s3cret" not in repr(smarthost)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[delivery]\nmx_port = 0", "delivery.mx_port: must be 1..65535"),
        ("[delivery]\nmax_connections = 0", "delivery.max_connections: must be at least 1"),
        ("[delivery]\nattempt_timeout = 0", "delivery.attempt_timeout: must be more than 0"),
        (
            '[[transport]]\ndomain = "a.test"\nrelay = "host"',
            'transport[0].relay: "host" needs a port',
        ),
        (
            '[[transport]]\ndomain = "a.test"\nrelay = "h:1"\nlmtp = "h:2"',
            "transport[0]: choose one of relay, lmtp, smarthost, mx (got relay, lmtp)",
        ),
        ('[[transport]]\ndomain = "a.test"', "transport[0]: say where mail goes"),
        ('[[transport]]\ndomain = "a.test"\ntls = "strict"', "transport[0].tls"),
        (
            '[[transport]]\ndomain = "a.test"\nsmarthost = true',
            "transport[0].smarthost: there is no [smarthost]",
        ),
        (
            '[[transport]]\ndomain = "a.test"\nmx = true\n'
            '[[transport]]\ndomain = "A.test"\nmx = true',
            'transport[1].domain: "A.test" is already defined by transport[0]',
        ),
        (
            '[smarthost]\nhost = "smtp.test"\nusername = "me"',
            "smarthost: username and a password (or password_file) go together",
        ),
        (
            '[[transport]]\ndomain = "EXAMPLE.org"\nrelay = "h:25"',
            "transport[0]: example.org is a [[domain]], whose mail goes into its mailboxes",
        ),
        ('[[transport]]\ndomain = "example.org"\nmx = true', "transport[0]: example.org is a"),
        ('[smarthost]\nhost = "smtp.test"\ntls = "none"', "smarthost.tls"),
        ("[smarthost]\nport = 587", "smarthost.host"),
    ],
)
def test_errors(extra: str, expected: str, tmp_path: Path) -> None:
    assert expected in problems(extra, tmp_path)


def test_a_local_domain_may_have_its_mailboxes_behind_lmtp(tmp_path: Path) -> None:
    # docs/configuration.md: a [[domain]] with a [[transport]] lmtp (Dovecot) is ours all the
    # same; only a route that would send its mail elsewhere is refused (test_errors).
    text = '[[transport]]\ndomain = "example.org"\nlmtp = "127.0.0.1:24"\ntls = "none"\n'
    (transport,) = parse(text, tmp_path).transports
    assert transport.lmtp == "[127.0.0.1]:24"


def _ca_pem(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "private CA")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "private-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_ca_files_for_next_hops(tmp_path: Path) -> None:
    ca = _ca_pem(tmp_path)
    settings = parse(
        '[delivery]\nca_file = "private-ca.pem"\n'
        '[smarthost]\nhost = "smtp.test"\nca_file = "private-ca.pem"\n',
        tmp_path,
    )
    assert settings.delivery.ca_file == ca and settings.smarthost is not None
    assert settings.smarthost.ca_file == ca
    verify, smarthost = verify_contexts(settings)
    der = ssl.PEM_cert_to_DER_cert(ca.read_text())
    assert der in verify.get_ca_certs(binary_form=True)  # added to the system's trust
    assert smarthost is not None
    assert smarthost.get_ca_certs(binary_form=True) == [der]  # its own trust: this file only
    assert verify_contexts(parse("", tmp_path))[1] is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[delivery]\nca_file = "missing.pem"', "delivery.ca_file: file"),
        ('[delivery]\nca_file = "key.pem"', "delivery.ca_file: "),
        ('[smarthost]\nhost = "s.test"\nca_file = "key.pem"', "smarthost.ca_file: "),
    ],
)
def test_ca_file_errors_name_the_key_and_the_fix(extra: str, expected: str, tmp_path: Path) -> None:
    _ca_pem(tmp_path)
    message = problems(extra, tmp_path)
    assert expected in message
    if "key.pem" in extra:
        assert "not a PEM file of CA certificates" in message and "not a key" in message
