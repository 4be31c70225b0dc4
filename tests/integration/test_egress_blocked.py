"""Outbound port 25 blocked (OP25B, issue 18 items 1 and 2), simulated on loopback: every MX
host of the test DNS zone is a loopback address on a port nobody listens on, so each TCP
connect is refused while DNS answers. The running server concludes after 5 different MX hosts
that port 25 is blocked, logs it once, `hato status` and `hato queue show` say so, and with
`[smarthost] fallback = true` the mail goes through the smarthost (a scripted peer with
STARTTLS on loopback) in the same attempt; `hato queue flush` then sends the earlier deferred
mail there too. `hato doctor` against the same running server says port 25 is blocked and that
the smarthost takes over, and its open-relay and submission self-tests pass. Nothing leaves
loopback: the doctor's egress target is a closed loopback port."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.hato import hato_binary
from peers.net import free_port
from peers.outbound_hato import OutboundConfig, OutboundHato, message
from peers.outbound_scripted import ScriptedPeer
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

pytestmark = pytest.mark.integration

DOMAINS = [f"d{n}.test" for n in range(1, 7)]


def _zone() -> dict[str, dict[str, list[ZoneValue]]]:
    zone: dict[str, dict[str, list[ZoneValue]]] = {"localhost": {"A": ["127.0.0.1"]}}
    for n, domain in enumerate(DOMAINS, start=1):
        zone[domain] = {"MX": [(10, f"mx.{domain}")]}
        zone[f"mx.{domain}"] = {"A": [f"127.0.0.{n + 1}"]}  # a different host for each
    return zone


def _server_tls(ca: TestCA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    return context


@pytest.fixture
def smarthost(test_ca: TestCA) -> Iterator[ScriptedPeer]:
    port = free_port()
    with ScriptedPeer("127.0.0.1", port, tls=_server_tls(test_ca)) as peer:
        yield peer


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def hato(
    workdir: Path, test_ca: TestCA, smarthost: ScriptedPeer, metrics_port: int
) -> Iterator[OutboundHato]:
    closed = free_port()
    extra = (
        f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n'
        f'\n[smarthost]\nhost = "localhost"\nport = {smarthost.port}\nfallback = true\n'
        f'\n[doctor]\negress_targets = ["127.0.0.1:{closed}"]\negress_timeout = 2\n'
        'dnsbls = []\naddresses = ["127.0.0.1"]\n'
    )
    with DnsTestServer(_zone()) as dns:
        server = OutboundHato(
            workdir / "data", test_ca, OutboundConfig(dns.nameserver, closed, extra)
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _gauge(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    [line] = [x for x in text.splitlines() if x.startswith(f"{name} ")]
    return line.split()[1]


def test_blocked_port_25_is_detected_and_mail_falls_back_to_the_smarthost(
    hato: OutboundHato, smarthost: ScriptedPeer, metrics_port: int
) -> None:
    assert _gauge(metrics_port, "hato_egress_blocked") == "0.0"
    markers = [uuid.uuid4().hex for _ in DOMAINS]
    ids = []
    # Four domains, one at a time: their MX hosts refuse, so each is deferred (one host down
    # says nothing about the network).
    for domain, marker in zip(DOMAINS[:4], markers, strict=False):
        hato.submit([f"bob@{domain}"], message(f"bob@{domain}", marker))
        [line] = hato.wait_event("deferred", to=f"<bob@{domain}>")
        ids.append(re.search(r"\bid=(\S+)", line).group(1))  # type: ignore[union-attr]
    assert hato.events("egress-blocked") == []
    assert smarthost.delivered() == []
    # The fifth different MX host: port 25 is blocked; the smarthost takes this one at once.
    hato.submit([f"bob@{DOMAINS[4]}"], message(f"bob@{DOMAINS[4]}", markers[4]))
    hato.wait_event("delivered", to=f"<bob@{DOMAINS[4]}>")
    assert len(smarthost.delivered(markers[4])) == 1
    [blocked] = hato.events("egress-blocked")
    assert "hosts=5" in blocked
    assert _gauge(metrics_port, "hato_egress_blocked") == "1.0"
    # Later mail skips MX altogether while blocked; logged once, not per message.
    hato.submit([f"bob@{DOMAINS[5]}"], message(f"bob@{DOMAINS[5]}", markers[5]))
    hato.wait_event("delivered", to=f"<bob@{DOMAINS[5]}>")
    assert len(hato.events("egress-blocked")) == 1

    status = hato.hato("status")
    assert "port 25 appears blocked on this network since" in status.stdout, status.stdout
    show = hato.hato("queue", "show", ids[0])
    assert show.returncode == 0, show.stderr
    assert "note: port 25 appears blocked on this network since" in show.stdout, show.stdout
    assert "mail goes through the [smarthost] (fallback = true)" in show.stdout

    hato.flush()  # the earlier deferred mail goes through the smarthost too
    for domain in DOMAINS[:4]:
        hato.wait_event("delivered", to=f"<bob@{domain}>")
    assert all(len(smarthost.delivered(m)) == 1 for m in markers)
    assert all(t.tls for t in smarthost.delivered())  # STARTTLS is required with a smarthost


def test_doctor_against_the_running_server(hato: OutboundHato) -> None:
    done = hato.hato("doctor", "--json")
    report = json.loads(done.stdout)
    by_check = {(f["check"], f["verdict"]) for f in report["findings"]}
    assert ("open-relay", "ok") in by_check, done.stdout
    assert ("submission", "ok") in by_check, done.stdout
    [egress] = [f for f in report["findings"] if f["check"] == "egress-25"]
    assert egress["verdict"] == "warning"
    assert egress["detail"].startswith("port 25 is blocked on this network: 127.0.0.1:")
    assert "mail falls back to the smarthost localhost:" in egress["detail"]


def test_the_periodic_doctor_logs_a_new_problem_and_mails_the_postmaster(
    workdir: Path, test_ca: TestCA
) -> None:
    closed = free_port()
    extra = (
        f'\n[doctor]\ninterval = 1\negress_targets = ["127.0.0.1:{closed}"]\negress_timeout = 2\n'
        'dnsbls = []\naddresses = ["127.0.0.1"]\n'
    )
    # example.org has no MX in this zone: the doctor's "mx" check is a problem.
    with DnsTestServer(_zone()) as dns:
        hato = OutboundHato(workdir / "data", test_ca, OutboundConfig(dns.nameserver, 25, extra))
        hato.start()
        try:
            [line] = hato.wait_event("doctor-problem", check="mx", scope="example.org")
            hato.wait_event("delivered", to="<postmaster@example.org>")
            found = maildir.messages(hato.mailbox("postmaster", "example.org"))
            assert len(found) == 1
            report = found[0].read_bytes()
            assert b"Subject: hato doctor on hato.test: 9 problem(s)" in report
            assert b"Auto-Submitted: auto-generated" in report
            assert b"\xe2\x9c\x98 mx example.org: MX is nxdomain, not hato.test" in report
            # The same problems at the next runs (a self-test each second shows they ran):
            # nothing new is logged or sent.
            runs = len(hato.events("rcpt-refused", rcpt="relay-test@relay-test.invalid"))
            hato.wait_event("rcpt-refused", count=runs + 2, rcpt="relay-test@relay-test.invalid")
            assert len(hato.events("doctor-problem", check="mx", scope="example.org")) == 1
            assert len(hato.events("queued")) == 1
        finally:
            hato.stop()
    assert "egress-blocked" not in line


NFT_DROP_25 = """
add table inet hato_egress_test
add chain inet hato_egress_test out { type filter hook output priority 0 ; }
add rule inet hato_egress_test out tcp dport 25 drop
"""


def test_doctor_says_blocked_when_the_network_drops_syns(
    workdir: Path, require_peer: Callable[[str], str]
) -> None:
    """The other OP25B: SYNs to port 25 silently dropped (a timeout, not a refusal), in a
    network namespace of the test's own with an nftables rule; nothing else is touched."""
    unshare, nft = require_peer("unshare"), require_peer("nft")
    config = workdir / "hato.toml"
    config.write_text(
        '[server]\nhostname = "mail.example.org"\ndata_dir = "data"\n'
        '[[listener]]\nrole = "mx"\naddress = "127.0.0.1:2525"\n'
        '[[domain]]\nname = "example.org"\n'
        # Nothing answers DNS in the namespace: every DNS check fails fast, egress is the point.
        '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 1\n'
        '[doctor]\negress_targets = ["127.0.0.1:25"]\negress_timeout = 1\ndnsbls = []\n'
        'addresses = ["127.0.0.1"]\n'
    )
    (workdir / "rules.nft").write_text(NFT_DROP_25)
    script = (
        f"ip link set lo up && {nft} -f {workdir / 'rules.nft'} && "
        f"exec {hato_binary()} doctor --json --config {config}"
    )
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=120,
        check=False,
    )
    if "Operation not permitted" in done.stderr:
        pytest.skip(f"no network namespace here: {done.stderr.strip()}")
    assert done.returncode == 1, done.stderr
    [egress] = [f for f in json.loads(done.stdout)["findings"] if f["check"] == "egress-25"]
    assert egress["verdict"] == "problem"
    assert egress["detail"] == "port 25 is blocked on this network: 127.0.0.1:25 timed out"
    assert "[smarthost]" in egress["fix"]
