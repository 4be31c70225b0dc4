"""`hato doctor` (issue 18 item 1) against the test DNS server and loopback peers: a correct
set-up passes every check; each broken one (a stale DKIM key, SPF with 11 lookups, no PTR, an
MTA-STS policy changed under the same id, an expiring certificate, a listed address, port 25
blocked) is a problem with the fix to paste, and exit status 1. Nothing leaves loopback: the
port 25 targets are loopback ports, the MTA-STS policy comes from a local HTTPS server."""

from __future__ import annotations

import datetime
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from peers.net import refused_port

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import generate_key, load_signing_key
from hato.authcheck.dkim import DkimAlgorithm
from hato.cli import main

HOST = "mail.example.org"
OUR_IP = "192.0.2.10"
POSTMASTER = "postmaster@example.org"
POLICY = f"version: STSv1\nmode: enforce\nmx: {HOST}\nmax_age: 86400\n"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(directory: Path, names: tuple[str, ...], days: int) -> tuple[Path, Path, Path]:
    """A CA and a leaf for `names` valid `days` from now: (ca.pem, fullchain.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("doctor test CA"))
        .issuer_name(_name("doctor test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "ca.pem", directory / "fullchain.pem", directory / "key.pem"


class PolicyServer:
    """HTTPS on loopback serving /.well-known/mta-sts.txt as text/plain (RFC 8461 §3.3)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.policy = POLICY
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.policy.encode()
                self.send_response(200 if self.path == "/.well-known/mta-sts.txt" else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class World:
    dns: DnsTestServer
    zone: dict[str, dict[str, list[ZoneValue]]]
    workdir: Path
    policy: PolicyServer
    open_port: int  # a loopback port that accepts: "port 25 works"
    closed_port: int  # a loopback port nobody listens on: "refused"
    dkim_txt: str

    def write_config(self, *, egress_port: int | None = None, extra: str = "") -> None:
        port = self.open_port if egress_port is None else egress_port
        (self.workdir / "hato.toml").write_text(
            f"""
[server]
hostname = "{HOST}"
data_dir = "data"

[[listener]]
role = "mx"
address = "127.0.0.1:{self.closed_port}"

[[domain]]
name = "example.org"

[tls]
cert = "pki/fullchain.pem"
key = "pki/key.pem"

[dns]
nameservers = ["{self.dns.nameserver}"]
timeout = {HATO_DNS_TIMEOUT}

[delivery]
mta_sts_connect_to = "127.0.0.1:{self.policy.port}"
mta_sts_ca_file = "sts/ca.pem"

[doctor]
egress_targets = ["127.0.0.1:{port}"]
egress_timeout = 2
dnsbls = ["bl.test"]
addresses = ["{OUR_IP}"]
{extra}
"""
        )

    def reload_zone(self) -> None:
        self.dns.load(self.zone)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATO_HOME", raising=False)
    make_pki(tmp_path / "pki", (HOST,), days=90)
    _, sts_chain, sts_key = make_pki(tmp_path / "sts", ("mta-sts.example.org",), days=90)
    pem, _ = generate_key(DkimAlgorithm.ED25519_SHA256)
    selector_dir = tmp_path / "data" / "dkim" / "example.org"
    selector_dir.mkdir(parents=True)
    zone: dict[str, dict[str, list[ZoneValue]]] = {
        "example.org": {"MX": [(10, HOST)], "TXT": ["v=spf1 mx -all"]},
        HOST: {"A": [OUR_IP], "TXT": ["v=spf1 a -all"]},
        "10.2.0.192.in-addr.arpa": {"PTR": [HOST]},
        "_dmarc.example.org": {"TXT": [f"v=DMARC1; p=quarantine; rua=mailto:{POSTMASTER}"]},
        "_mta-sts.example.org": {"TXT": ["v=STSv1; id=20260101"]},
        "_smtp._tls.example.org": {"TXT": ["v=TLSRPTv1; rua=mailto:postmaster@example.org"]},
        "bl.test": {"TXT": ["a block list"]},
    }
    listener = socket.create_server(("127.0.0.1", 0))
    policy = PolicyServer(sts_chain, sts_key)
    with refused_port() as closed_port, DnsTestServer(zone) as dns:
        dkim_txt = load_signing_key(pem).dns_txt()
        w = World(dns, zone, tmp_path, policy, listener.getsockname()[1], closed_port, dkim_txt)
        w.write_config()
        selector = _selector(tmp_path)
        (selector_dir / f"{selector}.key").write_bytes(pem)
        zone[f"{selector}._domainkey.example.org"] = {"TXT": [txt_strings(dkim_txt)]}
        w.reload_zone()
        yield w
    policy.close()
    listener.close()


def _selector(workdir: Path) -> str:
    from hato.config import load_settings

    settings = load_settings(workdir / "hato.toml", env={}, cwd=workdir).settings
    return settings.domains[0].dkim_selector


def doctor(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["doctor", *extra])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("✘")]


def warnings(out: str, check: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"! {check} ")]


def test_a_correct_set_up_passes_every_check(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(capsys)
    assert problems(out) == [], out
    assert code == 0
    checks = ("mx", "mx-address", "ptr", "spf", "spf-helo", "dkim", "dmarc", "mta-sts", "tls-rpt")
    for check in checks:
        assert any(line.startswith(f"✔ {check} ") for line in out.splitlines()), (check, out)
    assert "✔ certificate mail.example.org: valid for 89 more days" in out
    assert f"✔ dnsbl {OUR_IP}: not listed on bl.test" in out
    assert "✔ egress-25: outbound TCP port 25 works" in out
    # The server is not running: its self-tests are warnings, not problems.
    assert "! open-relay 127.0.0.1:" in out


def test_json_output_has_the_same_findings(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert {f["check"] for f in report["findings"]} >= {"mx", "spf", "dkim", "egress-25"}


def test_a_stale_dkim_key_in_dns_is_a_problem_with_the_record_to_publish(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    _, other = generate_key(DkimAlgorithm.ED25519_SHA256)
    name = next(n for n in world.zone if "._domainkey." in n)
    world.zone[name] = {"TXT": [txt_strings(other)]}
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        f"✘ dkim example.org: the key at {name} is not the key Hato signs with (stale?): "
        "verification fails"
    ]
    assert f'{name}. IN TXT "{world.dkim_txt}"' in out


def test_spf_with_eleven_lookups_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    includes = " ".join(f"include:s{i}.x.org" for i in range(11))
    world.zone["example.org"] = {"MX": [(10, HOST)], "TXT": [f"v=spf1 mx {includes} -all"]}
    for i in range(11):
        world.zone[f"s{i}.x.org"] = {"TXT": ["v=spf1 -all"]}
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        "✘ spf example.org: the record is broken for receivers "
        "(permerror: more than 10 DNS-querying terms)"
    ]
    assert "at most 10 lookups" in out
    assert f'example.org. IN TXT "v=spf1 mx ip4:{OUR_IP} -all"' in out


def test_spf_that_leaves_out_our_address_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.zone["example.org"] = {"MX": [(10, HOST)], "TXT": ["v=spf1 ip4:198.51.100.1 -all"]}
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [f"✘ spf example.org: {OUR_IP} gets fail (-all)"]


HELO_WHY = (
    "bounces of mail from outside are sent unsigned with an empty MAIL FROM, so receivers "
    "check SPF for the HELO name (RFC 7208 §2.3, §2.4) and DMARC passes only by it"
)


def test_no_spf_for_the_hostname_is_a_warning_with_the_record_to_publish(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    del world.zone[HOST]["TXT"]
    world.reload_zone()
    code, out = doctor(capsys)
    assert (code, problems(out)) == (0, [])
    assert warnings(out, "spf-helo") == [f"! spf-helo {HOST}: no SPF record (v=spf1): {HELO_WHY}"]
    assert f'      {HOST}. IN TXT "v=spf1 a -all"' in out.splitlines()


def test_spf_for_the_hostname_that_leaves_out_our_address_is_a_warning(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.zone[HOST]["TXT"] = ["v=spf1 ip4:198.51.100.1 -all"]
    world.reload_zone()
    code, out = doctor(capsys)
    assert (code, problems(out)) == (0, [])
    assert warnings(out, "spf-helo") == [
        f"! spf-helo {HOST}: {OUR_IP} gets fail (-all): {HELO_WHY}"
    ]
    assert f'      {HOST}. IN TXT "v=spf1 a -all"' in out.splitlines()


def test_the_record_for_the_hostname_names_addresses_its_a_records_leave_out(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # [doctor] addresses sends from OUR_IP; the hostname's A record is another address.
    world.zone[HOST]["A"] = ["192.0.2.99"]
    world.reload_zone()
    _, out = doctor(capsys)
    assert warnings(out, "spf-helo") == [
        f"! spf-helo {HOST}: {OUR_IP} gets fail (-all): {HELO_WHY}"
    ]
    assert f'      {HOST}. IN TXT "v=spf1 a ip4:{OUR_IP} -all"' in out.splitlines()


def test_a_missing_ptr_is_a_problem_naming_the_record(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    del world.zone["10.2.0.192.in-addr.arpa"]
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [f"✘ ptr {OUR_IP}: no PTR record (nxdomain)"]
    assert f"10.2.0.192.in-addr.arpa. IN PTR {HOST}." in out


def test_a_ptr_to_another_name_is_not_forward_confirmed(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.zone["10.2.0.192.in-addr.arpa"] = {"PTR": ["dsl-10.isp.example"]}
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [f"✘ ptr {OUR_IP}: PTR is dsl-10.isp.example, not the EHLO name {HOST}"]


def test_an_mta_sts_policy_changed_under_the_same_id_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert doctor(capsys)[0] == 0  # the doctor remembers the policy under id 20260101
    world.policy.policy = POLICY.replace("max_age: 86400", "max_age: 604800")
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        "✘ mta-sts example.org: the policy changed but the id (20260101) did not: "
        "senders keep the old one"
    ]
    assert '_mta-sts.example.org. IN TXT "v=STSv1; id=' in out


def test_an_mta_sts_policy_for_another_mx_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.policy.policy = POLICY.replace(f"mx: {HOST}", "mx: old-mx.example.org")
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        f"✘ mta-sts example.org: the policy's mx (old-mx.example.org) does not match {HOST}"
    ]


def test_an_expiring_certificate_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    make_pki(world.workdir / "pki", (HOST,), days=5)
    code, out = doctor(capsys)
    assert code == 1
    [line] = problems(out)
    assert line.startswith("✘ certificate mail.example.org: expires in 4 day(s)")
    assert "certbot renew" in out


def test_a_certificate_for_another_name_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    make_pki(world.workdir / "pki", ("www.example.org",), days=90)
    _, out = doctor(capsys)
    assert problems(out) == [
        "✘ certificate mail.example.org: names www.example.org, not mail.example.org"
    ]


def test_a_listed_address_is_a_problem(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.zone["10.2.0.192.bl.test"] = {"A": ["127.0.0.2"]}
    world.reload_zone()
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [f"✘ dnsbl {OUR_IP}: listed on bl.test (127.0.0.2)"]


def test_port_25_refused_says_blocked_and_prints_the_smarthost_section(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.write_config(egress_port=world.closed_port)
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        f"✘ egress-25: port 25 is blocked on this network: 127.0.0.1:{world.closed_port} refused"
    ]
    assert "[smarthost]" in out and "port = 587" in out and "password_file" in out
    assert "include:" in out


def test_port_25_blocked_with_a_smarthost_is_fine(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.zone["relay.example.net"] = {"A": ["198.51.100.7"]}
    world.zone["example.org"] = {
        "MX": [(10, HOST)],
        "TXT": ["v=spf1 mx ip4:198.51.100.7 -all"],
    }
    world.reload_zone()
    world.write_config(
        egress_port=world.closed_port, extra='[smarthost]\nhost = "relay.example.net"\n'
    )
    code, out = doctor(capsys)
    assert problems(out) == [], out
    assert "all mail goes through relay.example.net" in out
    assert "✔ spf example.org: 198.51.100.7 passes (ip4:198.51.100.7)" in out
    assert " spf-helo " not in out  # the relay's HELO name is the one receivers check
    assert code == 0


def test_caa_that_leaves_out_our_ca_is_a_problem(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # RFC 8659 §3: the parent's CAA decides for mail.example.org, which has none of its own.
    world.zone["example.org"] = {**world.zone["example.org"], "CAA": [(0, "issue", "ca.test")]}
    world.reload_zone()
    world.write_config(extra='caa_issuer = "letsencrypt.org"')
    code, out = doctor(capsys)
    assert code == 1
    assert problems(out) == [
        "✘ caa mail.example.org: CAA at example.org allows ca.test, not letsencrypt.org: "
        "renewal will fail"
    ]
    assert 'example.org. IN CAA 0 issue "letsencrypt.org"' in out
    world.zone["example.org"]["CAA"] = [(0, "issue", "letsencrypt.org; validationmethods=dns-01")]
    world.reload_zone()
    code, out = doctor(capsys)
    assert (code, problems(out)) == (0, [])
    assert "✔ caa mail.example.org: CAA at example.org allows letsencrypt.org" in out
