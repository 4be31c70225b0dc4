"""The mx [screen] end to end (issue 17 §3): `hato serve` with its lists asked through the
in-process DNS server, clients from several loopback addresses (127.0.0.0/8 is all loopback,
so each test client has an address of its own).

- an early talker (before the greeting, and between its "220-" and "220 " lines) gets
  554 5.5.1 and is disconnected; a patient client's mail is delivered, and its next
  connection is greeted at once;
- a client a DNSBL lists gets a 554 5.7.1 greeting naming the list; one a DNSWL vouches for,
  an answer outside the site's pattern and an allow-listed address are greeted; each list
  answer is asked once (the DNS TTL cache); the refusals are counted in /metrics;
- the connection rate: the N+1th connection of a client within the minute gets 421 4.7.0,
  another client still gets in;
- greylisting: a new triplet gets 451 4.7.1 at RCPT (and again before the delay); an SPF-pass
  sender is exempt; with the delay at 0 the retry passes and the mail is delivered, and after
  a restart the triplet is still known (DATA_DIR/screen.db);
- with `[server] workers = 2` both processes count connections and know triplets together.
"""

from __future__ import annotations

import smtplib
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.clients import message
from peers.hato import HatoServer
from peers.net import RawSession

from dnsserver import DnsTestServer, hato_dns

BL, WL, OTHER = "bl.test", "wl.test", "other.test"
SITES = f'["{BL}=127.0.0.[2..11]*3", "{WL}=127.0.[0..255].[1..3]*-2", "{OTHER}"]'
# RFC 5782 §2.1: client 127.0.0.N is asked as N.0.0.127.<zone>.
ZONE = {
    f"2.0.0.127.{BL}": {"A": ["127.0.0.2"]},  # listed: weight 3 = the threshold
    f"3.0.0.127.{BL}": {"A": ["127.0.0.2"]},  # listed, but a DNSWL vouches for it (-2)
    f"3.0.0.127.{WL}": {"A": ["127.0.10.2"]},
    f"4.0.0.127.{OTHER}": {"A": ["127.0.0.2"]},  # weight 1 only: below the threshold
    f"5.0.0.127.{BL}": {"A": ["127.0.0.200"]},  # outside the pattern [2..11]: not counted
    f"6.0.0.127.{BL}": {"A": ["127.0.0.2"]},  # listed, but in [screen] allow
    "spf.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "nospf.test": {"TXT": ["v=spf1 -all"]},
}


class ScreenHato(HatoServer):
    """The harness server plus [screen], [dns] and [metrics]; it is ready when its port
    greets, whatever the greeting (the harness's own client may be screened too)."""

    screened = True

    def __init__(self, data_dir: Path, screen: str, nameserver: str) -> None:
        super().__init__(data_dir)
        self.screen = screen
        self.nameserver = nameserver
        self.metrics_port = self.own_port("metrics_port")
        self.extra = ""  # more of [server] (e.g. workers)

    def _config_text(self) -> str:
        return (
            super()._config_text().replace("[server]\n", self.extra or "[server]\n", 1)
            + f"\n[screen]\n{self.screen}\n"
            + hato_dns(self.nameserver)
            + f'\n[metrics]\naddress = "127.0.0.1:{self.metrics_port}"\n'
        )

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path, dns: DnsTestServer) -> Iterator[list[ScreenHato]]:
    started: list[ScreenHato] = []
    yield started
    for server in started:
        server.stop()


def _start(started: list[ScreenHato], tmp: Path, screen: str, dns: DnsTestServer) -> ScreenHato:
    server = ScreenHato(tmp / f"data{len(started)}", screen, dns.nameserver)
    started.append(server)
    server.start()
    return server


def _greeting(server: ScreenHato, source: str) -> tuple[int, str]:
    with RawSession(server.host, server.port, timeout=10, source=source) as session:
        code, lines = session.reply()
    return code, lines[-1][4:].decode()


def _closed(session: RawSession) -> bool:
    """The server closed the connection (EOF) once its reply was read."""
    session.sock.settimeout(10)
    try:
        return session.sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ---- the early talker ----


def test_early_talker_is_refused_and_a_patient_client_delivers(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    server = _start(serve, tmp_path, "pregreet_wait = 3", dns)
    # RFC 5321 §4.3.1: talking before any greeting.
    with RawSession(server.host, server.port, timeout=10, source="127.0.0.21") as rude:
        rude.send(b"EHLO spambot.test\r\n")
        code, lines = rude.reply()
        assert (code, lines[-1][4:9]) == (554, b"5.5.1"), lines
        assert _closed(rude)
    # Talking after the "220-" line, before the greeting's last line.
    with RawSession(server.host, server.port, timeout=10, source="127.0.0.22") as hasty:
        first = b""
        while not first.endswith(b"\r\n"):
            first += hasty.sock.recv(1)
        assert first.startswith(b"220-hato.test"), first
        hasty.send(b"EHLO hasty.test\r\n")
        code, lines = hasty.reply()
        assert code == 554 and lines[-1].startswith(b"554 5.5.1"), lines
    # A client that waits for the whole greeting is served as usual.
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.0.23", 0)) as c:
        c.sendmail(
            "a@sender.test",
            ["bob@example.org"],
            message("a@sender.test", "bob@example.org", "patient"),
        )
    maildir.wait_for_marker(server.mailbox("bob", "example.org"), "patient")
    # Having waited once, it is greeted at once for a while (pregreet_ttl): no "220-" line.
    with RawSession(server.host, server.port, timeout=10, source="127.0.0.23") as again:
        assert again.reply()[1] == [b"220 hato.test ESMTP Hato"]
    assert server.wait_for_log(
        r"event=connection-refused .*client=127\.0\.0\.22 reason=early-talker"
    )
    assert server.log_text().count("reason=early-talker") == 2
    assert server.metric('hato_screen_refusals_total{reason="early-talker"}') == 2.0


# ---- DNSBL / DNSWL scores ----


def test_dnsbl_listed_client_is_refused_naming_the_list(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    screen = f'dnsbl_sites = {SITES}\ndnsbl_threshold = 3\nallow = ["127.0.0.6/32"]'
    server = _start(serve, tmp_path, screen, dns)
    for _ in range(2):
        code, text = _greeting(server, "127.0.0.2")
        assert code == 554
        assert text == f"5.7.1 Service unavailable; client [127.0.0.2] blocked using {BL}"
    # Asked once: the second client from there got the cached answer (its TTL is 300 s).
    assert dns.queries_for(f"2.0.0.127.{BL}", "A") == 1
    assert server.metric('hato_screen_refusals_total{reason="dnsbl"}') == 2.0
    assert server.wait_for_log(rf"event=dnsbl-listed .*client=127\.0\.0\.2 score=3 lists={BL}")
    # A listed client that a DNSWL vouches for (3 - 2 < 3), one with a lower weight only,
    # one whose answer is outside the pattern, one in the allow list: all greeted.
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
        assert _greeting(server, source)[0] == 220, source
    assert dns.queries_for(f"6.0.0.127.{BL}", "A") == 0  # allow-listed: never asked
    # The vouched-for client delivers.
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.0.3", 0)) as c:
        c.sendmail(
            "a@sender.test",
            ["bob@example.org"],
            message("a@sender.test", "bob@example.org", "vouched"),
        )
    maildir.wait_for_marker(server.mailbox("bob", "example.org"), "vouched")


# ---- the connection rate ----


def test_connection_rate_limit_answers_421(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    server = _start(serve, tmp_path, "connection_rate = 3", dns)
    for _ in range(3):
        assert _greeting(server, "127.0.0.31")[0] == 220
    with RawSession(server.host, server.port, timeout=10, source="127.0.0.31") as fourth:
        code, lines = fourth.reply()
        assert code == 421 and lines[-1].startswith(b"421 4.7.0"), lines
        assert _closed(fourth)
    assert _greeting(server, "127.0.0.32")[0] == 220  # another client is counted apart
    assert server.wait_for_log(
        r"event=connection-refused .*client=127\.0\.0\.31 reason=connection-rate"
    )
    assert server.metric('hato_screen_refusals_total{reason="connection-rate"}') == 1.0


# ---- greylisting ----


def _rcpt(server: ScreenHato, source: str, sender: str, rcpt: str) -> tuple[int, bytes]:
    with RawSession(server.host, server.port, timeout=10, source=source) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        assert session.command(b"MAIL FROM:<" + sender.encode() + b">")[0] == 250
        code, lines = session.command(b"RCPT TO:<" + rcpt.encode() + b">")
    return code, lines[-1]


def test_greylisting_defers_a_new_triplet_and_spares_spf_pass(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    server = _start(serve, tmp_path, "greylist = true\ngreylist_delay = 3600", dns)
    code, line = _rcpt(server, "127.0.0.41", "a@nospf.test", "bob@example.org")
    assert code == 451 and line.startswith(b"451 4.7.1 Greylisted"), line
    # Retried before the delay: still deferred.
    assert _rcpt(server, "127.0.0.41", "a@nospf.test", "bob@example.org")[0] == 451
    # An unknown recipient is refused for what it is, not greylisted.
    server_users = _rcpt(server, "127.0.0.41", "a@nospf.test", "nobody@users.test")
    assert server_users[0] == 550, server_users
    # RFC 5321 §4.5.1: postmaster (and RFC 2142 abuse) is never made to wait.
    assert _rcpt(server, "127.0.0.41", "a@nospf.test", "postmaster@example.org")[0] == 250
    # RFC 7208: spf.test authorizes 127.0.0.0/8, so its mail is not made to wait.
    assert _rcpt(server, "127.0.0.41", "a@spf.test", "bob@example.org")[0] == 250
    assert server.wait_for_log(r"event=greylisted .*client=127\.0\.0\.41 sender=a@nospf\.test")
    assert server.metric('hato_screen_refusals_total{reason="greylisted"}') == 2.0


def test_greylisted_triplet_passes_after_the_delay_and_is_remembered(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    server = _start(serve, tmp_path, "greylist = true\ngreylist_delay = 0", dns)
    sender, rcpt = "a@nospf.test", "bob@example.org"
    assert _rcpt(server, "127.0.0.51", sender, rcpt)[0] == 451
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=("127.0.0.51", 0)) as c:
        c.sendmail(sender, [rcpt], message(sender, rcpt, "retried"))
    maildir.wait_for_marker(server.mailbox("bob", "example.org"), "retried")
    # The neighbour in the same /24 is the same sending farm (RFC 6647 §4.2); after a restart
    # the triplet is still known: it lives in DATA_DIR/screen.db.
    server.stop()
    server.start()
    assert _rcpt(server, "127.0.0.52", sender, rcpt)[0] == 250
    assert _rcpt(server, "127.0.0.52", sender, "carol@example.org")[0] == 451
    assert (server.data_dir / "screen.db").exists()


def test_no_screen_without_its_keys(tmp_path: Path) -> None:
    """Nothing of [screen] runs (nor is its database made) when no key turns it on."""
    server = HatoServer(tmp_path / "data")
    server.start()
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            assert sock.recv(100).startswith(b"220 hato.test")
        assert not (server.data_dir / "screen.db").exists()
    finally:
        server.stop()


def test_workers_share_the_rate_and_the_greylist(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    """With `[server] workers = 2` both processes count one client's connections together
    and know the same triplets (DATA_DIR/screen.db): 4 of 8 connections open at once get in,
    and a triplet deferred by one worker passes its retry on either."""
    screen = "connection_rate = 4\ngreylist = true\ngreylist_delay = 0"
    server = ScreenHato(tmp_path / "data", screen, dns.nameserver)
    serve.append(server)
    server.extra = "[server]\nworkers = 2\n"
    server.start()
    sessions = [
        RawSession(server.host, server.port, timeout=10, source="127.0.0.61") for _ in range(8)
    ]
    try:
        codes = sorted(session.reply()[0] for session in sessions)
    finally:
        for session in sessions:
            session.sock.close()
    assert codes == [220] * 4 + [421] * 4
    sender, rcpt = "a@nospf.test", "bob@example.org"
    assert _rcpt(server, "127.0.0.62", sender, rcpt)[0] == 451
    for _ in range(3):  # whichever worker takes the retry knows the triplet
        assert _rcpt(server, "127.0.0.62", sender, rcpt)[0] == 250


def test_reload_turns_the_screen_on(
    tmp_path: Path, dns: DnsTestServer, serve: list[ScreenHato]
) -> None:
    """[screen] is a live key: `hato reload` applies it to the next connections."""
    server = _start(serve, tmp_path, "", dns)
    for _ in range(2):
        assert _greeting(server, "127.0.0.71")[0] == 220
    server.screen = "connection_rate = 1"
    server.config.write_text(server.config_text(), encoding="utf-8")
    done = server.hato("reload")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _greeting(server, "127.0.0.72")[0] == 220
    assert _greeting(server, "127.0.0.72")[0] == 421
