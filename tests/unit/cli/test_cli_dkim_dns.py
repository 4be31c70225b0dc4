"""`hato dkim keygen` and `hato dns [--check]` (issue 5 §6), against an in-process DNS server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsserver import DnsTestServer, hato_dns
from hato.authcheck import load_signing_key
from kit.commands import ADMIN_LOG, run
from kit.config import CLI, command_workdir


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns_server: DnsTestServer) -> Path:
    dns = hato_dns(dns_server.nameserver)
    (tmp_path / "data").mkdir()  # the server's data directory (made at its first start)
    return command_workdir(tmp_path, monkeypatch, CLI + dns)


def test_keygen_writes_a_private_key_and_prints_its_record(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "dkim", "keygen", "example.org", "--algorithm", "ed25519")
    assert (code, err) == (0, "")
    key_file = workdir / "data" / "dkim" / "example.org" / "hato.key"
    # hato.cli.audit: the new key is logged (no server runs: on stderr), never its contents.
    assert ADMIN_LOG[-1].endswith(
        " event=admin-dkim-keygen domain=example.org selector=hato algorithm=ed25519 "
        f"path={key_file} replaced=False uid={os.getuid()}\n"
    )
    assert key_file.stat().st_mode & 0o777 == 0o600
    txt = load_signing_key(key_file.read_bytes()).dns_txt()
    assert f'hato._domainkey.example.org. IN TXT "{txt}"' in out
    # A second key for the same selector is refused; rotation uses a new selector.
    code, _, err = run(capsys, "dkim", "keygen", "example.org")
    assert code == 1 and "exists" in err
    code, out, _ = run(capsys, "dkim", "keygen", "example.org", "--selector", "s2")
    assert code == 0 and 'set dkim_selector = "s2"' in out
    assert " selector=s2 algorithm=rsa " in ADMIN_LOG[-1]
    assert run(capsys, "dkim", "keygen", "example.org", "--force")[0] == 0
    assert f"path={key_file} replaced=True " in ADMIN_LOG[-1]


def test_keygen_refuses_a_foreign_domain(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dkim", "keygen", "example.net")
    assert code == 1 and "not a local domain" in err


def test_dns_prints_every_record(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "dkim", "keygen", "example.org")
    code, out, _ = run(capsys, "dns", "--ip", "192.0.2.25")
    assert code == 0
    assert "mail.example.org. IN A 192.0.2.25" in out
    assert 'mail.example.org. IN TXT "v=spf1 a -all"' in out  # the HELO name's, for bounces
    assert "example.org. IN MX 10 mail.example.org." in out
    assert 'example.org. IN TXT "v=spf1 mx ip4:192.0.2.25 -all"' in out
    assert "hato._domainkey.example.org. IN TXT" in out
    assert '_dmarc.example.org. IN TXT "v=DMARC1; p=quarantine' in out
    assert '_mta-sts.example.org. IN TXT "v=STSv1; id=' in out
    assert '_smtp._tls.example.org. IN TXT "v=TLSRPTv1;' in out
    assert "mx: mail.example.org" in out


def test_dns_check_says_what_is_wrong_then_ok(
    workdir: Path, capsys: pytest.CaptureFixture[str], dns_server: DnsTestServer
) -> None:
    dns_server.load(
        {
            "example.org": {"MX": [(10, "other.example.net")], "TXT": ["v=spf1 -all"]},
            "_dmarc.example.org": {"TXT": ["v=DMARC1; p=none"]},
        }
    )
    code, out, _ = run(capsys, "dns", "--check")
    assert code == 1
    assert "PROBLEM  example.org MX: points to other.example.net, not mail.example.org" in out
    assert "OK       example.org TXT" in out
    assert "PROBLEM  _mta-sts.example.org TXT: nxdomain" in out
    dns_server.load(
        {
            "example.org": {"MX": [(10, "mail.example.org")], "TXT": ["v=spf1 mx -all"]},
            "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
            "_mta-sts.example.org": {"TXT": ["v=STSv1; id=1"]},
            "_smtp._tls.example.org": {"TXT": ["v=TLSRPTv1; rua=mailto:x@example.org"]},
        }
    )
    code, out, _ = run(capsys, "dns", "--check")
    assert code == 0, out
    assert "PROBLEM" not in out
