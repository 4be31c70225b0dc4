"""Outbound routing end to end (issue 4): the real `hato serve` looks recipient domains up in an
in-process DNS server and delivers to Postfix's smtp-sink on loopback, or fails as RFC 5321 §5.1
and RFC 7505 say: MX, implicit MX (no MX, only A), IPv6 (an MX with only AAAA ::1), null MX
(bounced at once, 5.1.10), SERVFAIL (deferred, 4.4.3), NXDOMAIN (bounced, 5.1.2).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers.outbound_hato import SENDER, OutboundConfig, OutboundHato, message
from peers.outbound_peers import SmtpSink
from peers.outbound_scripted import ScriptedPeer
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "mx.test": {"MX": [(10, "mx1.mx.test")]},
    "mx1.mx.test": {"A": ["127.0.0.1"]},
    # RFC 5321 §5.1: no MX record, so the domain's own address is the implicit MX.
    "implicit.test": {"A": ["127.0.0.1"]},
    "v6.test": {"MX": [(10, "mx6.v6.test")]},
    "mx6.v6.test": {"AAAA": ["::1"]},
    # RFC 7505 §3: a single MX with exchange "." and preference 0.
    "nullmx.test": {"MX": [(0, ".")]},
    "servfail.test": {"A": ["127.0.0.1"]},
}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class World:
    dns: DnsTestServer
    sink: SmtpSink
    v6: ScriptedPeer | None
    hato: OutboundHato


@pytest.fixture(scope="module")
def world(test_ca: TestCA) -> Iterator[World]:
    """One Hato for the module, with the DNS server, smtp-sink on 127.0.0.1:P and (when the
    machine has ::1) a scripted peer on [::1]:P; P is Hato's mx_port."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(binary).exists():
        pytest.fail("peer 'smtp-sink' is not installed (.ci/run installs postfix)")
    work = Path(tempfile.mkdtemp(prefix="hato-it-route-"))
    work.chmod(0o755)
    dns = DnsTestServer(ZONE)
    dns.servfail.add("servfail.test")
    dns.start()
    sink = SmtpSink(binary, work)
    v6 = ScriptedPeer("::1", sink.port) if _ipv6_loopback() else None
    hato = OutboundHato(work / "data", test_ca, OutboundConfig(dns.nameserver, sink.port))
    try:
        sink.start()
        if v6 is not None:
            v6.start()
        hato.start()
        yield World(dns, sink, v6, hato)
    finally:
        hato.stop()
        if v6 is not None:
            v6.stop()
        sink.stop()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


def _check_alive(world: World) -> Callable[[], None]:
    def check() -> None:
        assert world.hato.alive(), world.hato.log_text()[-3000:]

    return check


def test_mx_record_delivers_to_its_host(world: World, marker: str) -> None:
    body = message("bob@mx.test", marker)
    world.hato.submit(["bob@mx.test"], body)
    found = world.sink.wait_for(marker)
    assert len(found) == 1, world.hato.log_text()[-3000:]
    dump = found[0]
    assert b"X-Mail-Args: <" + SENDER.encode() + b">" in dump
    assert b"X-Rcpt-Args: <bob@mx.test>" in dump
    # The message arrives unchanged after the headers Hato added (Received, ...); smtp-sink
    # writes LF line ends and one empty line after each dumped transaction.
    assert dump.replace(b"\r\n", b"\n").endswith(body.replace(b"\r\n", b"\n") + b"\n")
    world.hato.wait_event("delivered", to="<bob@mx.test>")
    assert world.dns.queries_for("mx.test", "MX") >= 1


def test_domain_without_mx_gets_mail_at_its_address(world: World, marker: str) -> None:
    world.hato.submit(["carol@implicit.test"], message("carol@implicit.test", marker))
    assert len(world.sink.wait_for(marker)) == 1, world.hato.log_text()[-3000:]
    world.hato.wait_event("delivered", to="<carol@implicit.test>")
    # RFC 5321 §5.1: the MX question was asked and answered NODATA, then the A record used.
    assert world.dns.queries_for("implicit.test", "MX") >= 1
    assert world.dns.queries_for("implicit.test", "A") >= 1


def test_mx_with_only_an_ipv6_address_is_reached_over_ipv6(world: World, marker: str) -> None:
    if world.v6 is None:
        pytest.skip("this machine has no ::1")
    world.hato.submit(["dave@v6.test"], message("dave@v6.test", marker))
    got = world.v6.wait_delivered(marker)
    assert len(got) == 1, world.hato.log_text()[-3000:]
    assert got[0].recipients == ["<dave@v6.test>"]
    world.hato.wait_event("delivered", to="<dave@v6.test>")
    assert world.sink.transactions(marker) == []


def test_null_mx_bounces_at_once_with_5_1_10(world: World, marker: str) -> None:
    world.hato.submit(["erin@nullmx.test"], message("erin@nullmx.test", marker))
    # RFC 7505 §4.2: permanent, 5.1.10, on the first attempt (no retry).
    [line] = world.hato.wait_event("failed", to="<erin@nullmx.test>", attempts="1")
    assert "556 5.1.10" in line or " 5.1.10 " in line, line
    assert world.sink.transactions(marker) == []


def test_servfail_defers_and_keeps_the_mail(world: World, marker: str) -> None:
    world.hato.submit(["fred@servfail.test"], message("fred@servfail.test", marker))
    [line] = world.hato.wait_event("deferred", to="<fred@servfail.test>")
    assert "4.4.3" in line, line
    assert not world.hato.events("failed", to="<fred@servfail.test>")
    listed = world.hato.hato("queue", "list", "--domain", "servfail.test")
    assert "fred@servfail.test" in listed.stdout, listed
    assert world.sink.transactions(marker) == []


def test_nxdomain_bounces(world: World, marker: str) -> None:
    world.hato.submit(["gina@nx.test"], message("gina@nx.test", marker))
    [line] = world.hato.wait_event("failed", to="<gina@nx.test>", attempts="1")
    assert "5.1.2" in line, line
    assert world.sink.transactions(marker) == []
