"""[tls] acme: what a valid table gives, and what a wrong one says."""

from __future__ import annotations

from pathlib import Path

import pytest

from hato.config import Settings
from hato.config.acme_sections import LETS_ENCRYPT
from hato.config.values import ListenAddress
from kit import config

TLS = config.BASE + "\n[tls]\n"  # the text of each test goes into [tls]


def parse(text: str, tmp_path: Path) -> Settings:
    return config.parse(text, tmp_path, base=TLS)


def problems(text: str, tmp_path: Path) -> tuple[str, ...]:
    return config.problems(text, tmp_path, base=TLS)


def test_defaults_are_lets_encrypt_on_port_80(tmp_path: Path) -> None:
    tls = parse('acme = { email = "postmaster@example.org" }', tmp_path).tls
    assert tls is not None and tls.acme is not None
    assert tls.cert is None and tls.key is None
    assert tls.acme.directory == LETS_ENCRYPT
    assert tls.acme.http_address == ListenAddress("0.0.0.0", 80)
    assert tls.acme.ca_file is None


def test_all_keys(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = (
        'acme = { email = "a@example.org", directory = "https://127.0.0.1:14000/dir", '
        'ca_file = "ca.pem", http_address = "127.0.0.1:5002" }'
    )
    acme = parse(text, tmp_path).tls.acme  # type: ignore[union-attr]
    assert acme is not None
    assert acme.ca_file == tmp_path / "ca.pem"
    assert acme.http_address == ListenAddress("127.0.0.1", 5002)


def test_cert_and_acme_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    text = 'cert = "c.pem"\nkey = "c.pem"\nacme = { email = "a@example.org" }'
    assert any("either cert and key, or acme" in p for p in problems(text, tmp_path))


def test_neither_says_what_to_give(tmp_path: Path) -> None:
    assert any("needs cert and key" in p for p in problems("", tmp_path))


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('{ email = "a@example.org", directory = "http://x/dir" }', "is not an https URL"),
        ('{ email = "nobody" }', "is not an email address"),
        ('{ email = "a@example.org", http_address = "80" }', "is not HOST:PORT"),
        ('{ email = "a@example.org", ca_file = "missing.pem" }', "missing.pem"),
        ('{ email = "a@example.org", challenge = "dns-01" }', "challenge"),
    ],
)
def test_bad_values_name_the_key(table: str, words: str, tmp_path: Path) -> None:
    found = problems(f"acme = {table}", tmp_path)
    assert any("tls.acme" in p and words in p for p in found), found


def test_tls_alpn_01_on_its_own_address(tmp_path: Path) -> None:
    text = (
        'acme = { email = "a@example.org", challenge = "tls-alpn-01", '
        'tls_address = "127.0.0.1:8443" }'
    )
    acme = parse(text, tmp_path).tls.acme  # type: ignore[union-attr]
    assert acme is not None
    assert acme.challenge == "tls-alpn-01"
    assert acme.tls_address == ListenAddress("127.0.0.1", 8443)
