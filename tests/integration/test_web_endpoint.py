"""The web endpoint (issue 18): the real `hato serve` serves the MTA-STS policy over HTTPS to
Host mta-sts.DOMAIN, which Hato's own outbound MTA-STS discovery accepts with the `_mta-sts`
record `hato dns` prints, and answers mail clients' autoconfig with the submission listeners'
ports."""

from __future__ import annotations

import asyncio
import http.client
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers.hato import HatoServer
from peers.server import MailSetup, submission_setup
from peers.tls import TestCA

from dnsserver import HATO_DNS_TIMEOUT, DnsTestServer
from hato.delivery.mtasts import (
    HttpsPolicyFetcher,
    MtaSts,
    StsMode,
    parse_policy,
    parse_sts_record,
)
from hato.dns import DnsPythonResolver
from hato.model import SystemClock


class WebHato(HatoServer):
    """Hato with its [wkd] web endpoint on HTTPS and users.test's MTA-STS mode `mode`."""

    def __init__(self, data_dir: Path, setup: MailSetup, mode: str) -> None:
        super().__init__(data_dir, setup)
        self.web_port = self.own_port("web_port")
        self.mode = mode

    def _config_text(self) -> str:
        text = (
            super()
            ._config_text()
            .replace('name = "users.test"', f'name = "users.test"\nmta_sts_mode = "{self.mode}"')
        )
        return text + (
            f'\n[wkd]\naddress = "127.0.0.1:{self.web_port}"\nhttps = true\nimap_port = 993\n'
        )


@pytest.fixture
def web(tmp_path: Path, test_ca: TestCA) -> Iterator[WebHato]:
    server = WebHato(tmp_path / "data", submission_setup(test_ca.tls_files()), "enforce")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _sts_record(server: HatoServer, domain: str) -> str:
    done = server.hato("dns")
    assert done.returncode == 0, done.stderr
    found = re.search(
        rf'^_mta-sts\.{re.escape(domain)}\. IN TXT "(v=STSv1; id=\w+)"$', done.stdout, re.M
    )
    assert found, done.stdout
    return found.group(1)


def _get(
    server: WebHato, test_ca: TestCA, host: str, path: str, method: str = "GET", body: str = ""
) -> tuple[int, str, str]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.web_port, context=test_ca.client_context(), timeout=10
    )
    try:
        conn.request(method, path, body=body or None, headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read().decode()
    finally:
        conn.close()


def test_our_own_mta_sts_discovery_accepts_the_served_policy(web: WebHato, test_ca: TestCA) -> None:
    record = _sts_record(web, "users.test")
    fetcher = HttpsPolicyFetcher(test_ca.client_context(), 10.0, ("127.0.0.1", web.web_port))

    async def discover() -> object:
        with DnsTestServer({"_mta-sts.users.test": {"TXT": [record]}}) as dns:
            resolver = DnsPythonResolver([dns.nameserver], timeout=HATO_DNS_TIMEOUT)
            return await MtaSts(resolver, fetcher, SystemClock(), 10.0).policy_for("users.test")

    policy = asyncio.run(discover())
    # What outbound delivery to users.test would enforce: our own MX, with valid TLS.
    assert policy is not None
    text = asyncio.run(fetcher.fetch("users.test"))
    parsed = parse_policy(text)
    assert parsed.mode is StsMode.ENFORCE
    assert parsed.mx == ("hato.test",) and parsed.matches("hato.test")
    assert parsed.max_age == 604800
    # Another of our domains gets its own (default: testing) policy; a stranger gets 404.
    other = parse_policy(asyncio.run(fetcher.fetch("example.org")))
    assert other.mode is StsMode.TESTING
    status, _, _ = _get(web, test_ca, "mta-sts.elsewhere.test", "/.well-known/mta-sts.txt")
    assert status == 404
    status, _, _ = _get(web, test_ca, "users.test", "/.well-known/mta-sts.txt")
    assert status == 404  # RFC 8461 §3.3: only at mta-sts.DOMAIN


def test_a_reload_serves_the_new_mode_under_the_new_id(web: WebHato, test_ca: TestCA) -> None:
    fetcher = HttpsPolicyFetcher(test_ca.client_context(), 10.0, ("127.0.0.1", web.web_port))
    before = _sts_record(web, "users.test")
    web.mode = "testing"
    web.config.write_text(web.config_text())
    applied = web.hato("reload")
    assert applied.returncode == 0 and "domain" in applied.stdout, applied
    after = _sts_record(web, "users.test")
    assert after != before
    text = asyncio.run(fetcher.fetch("users.test"))
    assert parse_policy(text, parse_sts_record(after)).mode is StsMode.TESTING


def test_the_mta_sts_id_follows_the_mode(tmp_path: Path, test_ca: TestCA) -> None:
    setup = submission_setup(test_ca.tls_files())
    testing = WebHato(tmp_path / "a", setup, "testing")
    enforce = WebHato(tmp_path / "b", setup, "enforce")
    ids = []
    for server in (testing, enforce):
        server._prepare()
        ids.append(_sts_record(server, "users.test"))
    assert ids[0] != ids[1]
    assert _sts_record(enforce, "users.test") == ids[1]  # stable while the policy is
    assert _sts_record(enforce, "example.org") == _sts_record(testing, "example.org")
    done = enforce.hato("dns")
    for line in (
        f"_submissions._tcp.users.test. IN SRV 0 1 {enforce.submissions_port} hato.test.",
        f"_submission._tcp.users.test. IN SRV 0 1 {enforce.submission_port} hato.test.",
        "_imaps._tcp.users.test. IN SRV 0 1 993 hato.test.",
        "mta-sts.users.test. IN CNAME hato.test.",
        "autoconfig.users.test. IN CNAME hato.test.",
    ):
        assert line in done.stdout.splitlines(), done.stdout


def _servers(xml: str, element: str) -> list[tuple[str, int, str]]:
    root = ET.fromstring(xml)
    return [
        (
            node.findtext("hostname", ""),
            int(node.findtext("port", "0")),
            node.findtext("socketType", ""),
        )
        for node in root.iter(element)
    ]


def test_autoconfig_names_the_submission_ports(web: WebHato, test_ca: TestCA) -> None:
    want = [
        ("hato.test", web.submissions_port, "SSL"),
        ("hato.test", web.submission_port, "STARTTLS"),
    ]
    for host, path in (
        ("autoconfig.users.test", "/mail/config-v1.1.xml?emailaddress=alice%40users.test"),
        ("users.test", "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ):
        status, ctype, body = _get(web, test_ca, host, path)
        assert status == 200 and ctype.startswith("application/xml"), (status, ctype)
        assert _servers(body, "outgoingServer") == want
        assert _servers(body, "incomingServer") == [("hato.test", 993, "SSL")]
        assert ET.fromstring(body).findtext("emailProvider/domain") == "users.test"
    status, _, _ = _get(web, test_ca, "autoconfig.elsewhere.test", "/mail/config-v1.1.xml")
    assert status == 404


def test_autodiscover_answers_for_our_addresses(web: WebHato, test_ca: TestCA) -> None:
    request = (
        '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
        'exchange/autodiscover/outlook/requestschema/2006"><Request>'
        "<EMailAddress>alice@users.test</EMailAddress><AcceptableResponseSchema>http://schemas."
        "microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
        "</AcceptableResponseSchema></Request></Autodiscover>"
    )
    status, _, body = _get(
        web, test_ca, "autodiscover.users.test", "/autodiscover/autodiscover.xml", "POST", request
    )
    assert status == 200
    ns = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
    protocols = [
        (p.findtext(f"{ns}Type"), p.findtext(f"{ns}Port"), p.findtext(f"{ns}Encryption"))
        for p in ET.fromstring(body).iter(f"{ns}Protocol")
    ]
    assert protocols == [
        ("IMAP", "993", "SSL"),
        ("SMTP", str(web.submissions_port), "SSL"),
        ("SMTP", str(web.submission_port), "TLS"),
    ]
    stranger = request.replace("users.test", "elsewhere.test")
    status, _, _ = _get(
        web, test_ca, "autodiscover.users.test", "/autodiscover/autodiscover.xml", "POST", stranger
    )
    assert status == 404
