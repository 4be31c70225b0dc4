"""Network policy and sending limits end to end (issue 3 §5 and §6).

§5, the OP25B model: named client networks (CIDRs, or a PBL-style DNSBL asked through an
in-process DNS server) and per-listener `refuse_networks` / `allow_networks`. A refused client
gets a 554 5.7.1 greeting (RFC 5321 §3.1) and nothing but QUIT afterwards; a DNSBL that cannot
be asked fails open for a refuse rule and answers 421 4.4.3 for an allow rule.

§6: per-user sending limits on the submission port (451 4.7.1 at MAIL past messages_per_hour,
at RCPT past recipients_per_hour) and the spike that holds an account and logs an alert.

Every client here connects from 127.0.0.1, so the servers refuse the harness itself: they are
ready when each port greets, whatever the greeting says.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from peers import maildir
from peers.clients import message
from peers.hato import HatoServer
from peers.net import LOOPBACK, RawSession
from peers.server import USER_PASSWORD, DomainSetup, MailSetup, TlsFiles
from peers.tls import TestCA

from dnsserver import DnsTestServer, hato_dns

# RFC 5782 §2.1: 127.0.0.1 is asked as 1.0.0.127.<zone>; an A record in 127/8 means listed.
LISTING_ZONE = "pbl.test"
BROKEN_ZONE = "broken-pbl.test"
LISTED_NAME = f"1.0.0.127.{LISTING_ZONE}"
BROKEN_NAME = f"1.0.0.127.{BROKEN_ZONE}"


class PolicyHato(HatoServer):
    """The harness server plus [[network]] tables, listener rules, [limits] keys and [dns]; its
    rules may refuse the harness's own client a 220."""

    screened = True

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        *,
        networks: str = "",
        mx_rules: str = "",
        submission_rules: str = "",
        limits: str = "",
        nameserver: str | None = None,
    ) -> None:
        super().__init__(data_dir, setup)
        self.networks = networks
        self.mx_rules = mx_rules
        self.submission_rules = submission_rules
        self.limits = limits
        self.nameserver = nameserver

    def _config_text(self) -> str:
        text = super()._config_text()
        for role, port, rules in (
            ("mx", self.port, self.mx_rules),
            ("submission", self.submission_port, self.submission_rules),
        ):
            listener = f'role = "{role}"\naddress = "{self.host}:{port}"\n'
            assert listener in text, f"the harness config changed shape: no {listener!r}"
            text = text.replace(listener, listener + rules + "\n" if rules else listener, 1)
        text = text.replace("[limits]\n", f"[limits]\n{self.limits}\n", 1)
        if self.nameserver is not None:
            text += hato_dns(self.nameserver)
        return text + "\n" + self.networks + "\n"


def greeting(host: str, port: int) -> tuple[int, str]:
    """Connect, read the greeting (code, text of its last line) and QUIT."""
    with RawSession(host, port, timeout=10) as session:
        code, lines = session.reply()
    return code, lines[-1][4:].decode()


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    with DnsTestServer({LISTED_NAME: {"A": ["127.0.0.11"]}}) as server:
        server.servfail.add(BROKEN_NAME)
        yield server


class Start(Protocol):
    """The `start` fixture: start a PolicyHato with these config additions."""

    def __call__(
        self,
        setup: MailSetup,
        *,
        networks: str = "",
        mx_rules: str = "",
        submission_rules: str = "",
        limits: str = "",
        nameserver: str | None = None,
    ) -> PolicyHato: ...


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    servers: list[PolicyHato] = []

    def make(
        setup: MailSetup,
        *,
        networks: str = "",
        mx_rules: str = "",
        submission_rules: str = "",
        limits: str = "",
        nameserver: str | None = None,
    ) -> PolicyHato:
        server = PolicyHato(
            tmp_path / f"data{len(servers)}",
            setup,
            networks=networks,
            mx_rules=mx_rules,
            submission_rules=submission_rules,
            limits=limits,
            nameserver=nameserver,
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        # Shown by pytest only when the test failed ("Captured stdout teardown").
        print(
            f"--- hato log ({server.port}) ---\n" + "\n".join(server.log_text().splitlines()[-200:])
        )


def _setup(tls: TlsFiles, *users: str) -> MailSetup:
    return MailSetup(
        domains=(
            DomainSetup("example.org", accept_any=True),
            DomainSetup("users.test", users=users),
        ),
        submission=True,
        tls=tls,
    )


def _refused_with_554_5_7_1(server: PolicyHato, port: int) -> str:
    """The greeting's text; RFC 5321 §3.1: after a 554 greeting only QUIT is served."""
    with RawSession(server.host, port, timeout=10) as session:
        code, lines = session.reply()
        assert code == 554, lines
        text = lines[-1][4:].decode()
        assert text.startswith("5.7.1 "), lines
        assert session.command(b"EHLO client.test")[0] == 503
        assert session.command(b"MAIL FROM:<a@example.net>")[0] == 503
    return text


# ---- §5: network policy ----------------------------------------------------------------------


def test_op25b_mx_refuses_a_dynamic_cidr_and_points_to_the_submission_port(
    start: Start, test_ca: TestCA
) -> None:
    server = start(
        _setup(test_ca.tls_files()),
        networks='[[network]]\nname = "dynamic"\ncidrs = ["127.0.0.0/8"]\n',
        mx_rules='refuse_networks = ["dynamic"]',
    )
    text = _refused_with_554_5_7_1(server, server.port)
    assert "587" in text and "submission" in text
    assert server.wait_for_log(r"event=connection-refused listener=mx\S* client=127\.0\.0\.1")
    # The rule belongs to the mx listener: the submission port still greets this client.
    assert greeting(server.host, server.submission_port)[0] == 220


def test_op25b_mx_refuses_a_client_listed_by_the_dnsbl(
    start: Start, test_ca: TestCA, dns_server: DnsTestServer
) -> None:
    server = start(
        _setup(test_ca.tls_files()),
        networks=f'[[network]]\nname = "dynamic"\ndnsbl = "{LISTING_ZONE}"\n',
        mx_rules='refuse_networks = ["dynamic"]',
        nameserver=dns_server.nameserver,
    )
    text = _refused_with_554_5_7_1(server, server.port)
    assert "587" in text
    assert dns_server.queries_for(LISTED_NAME, "A") >= 1

    # Not listed (NXDOMAIN, RFC 5782 §2.1): the same client is welcome.
    dns_server.load({})
    other = start(
        _setup(test_ca.tls_files()),
        networks=f'[[network]]\nname = "dynamic"\ndnsbl = "{LISTING_ZONE}"\n',
        mx_rules='refuse_networks = ["dynamic"]',
        nameserver=dns_server.nameserver,
    )
    assert greeting(other.host, other.port)[0] == 220


def test_dnsbl_servfail_fails_open_for_refuse_and_answers_421_4_4_3_for_allow(
    start: Start, test_ca: TestCA, dns_server: DnsTestServer
) -> None:
    server = start(
        _setup(test_ca.tls_files()),
        networks=f'[[network]]\nname = "listed"\ndnsbl = "{BROKEN_ZONE}"\n',
        mx_rules='refuse_networks = ["listed"]',
        submission_rules='allow_networks = ["listed"]',
        nameserver=dns_server.nameserver,
    )
    # A refuse rule whose list cannot be asked lets the client in (mail keeps flowing)...
    assert greeting(server.host, server.port)[0] == 220
    assert server.wait_for_log(r"event=dnsbl-tempfail .*network=listed")
    # ...an allow rule cannot tell, so the client is told to come back later, not refused.
    with RawSession(server.host, server.submission_port, timeout=10) as session:
        code, lines = session.reply()
        assert code == 421, lines
        assert lines[-1][4:].startswith(b"4.4.3 "), lines
        with pytest.raises(OSError):  # RFC 5321 §3.8: 421 closes the connection
            session.command(b"EHLO client.test")
    assert dns_server.queries_for(BROKEN_NAME, "A") >= 1


def test_submission_limited_to_an_office_network_refuses_others(
    start: Start, test_ca: TestCA
) -> None:
    server = start(
        _setup(test_ca.tls_files()),
        networks='[[network]]\nname = "office"\ncidrs = ["10.99.0.0/16"]\n',
        submission_rules='allow_networks = ["office"]',
    )
    _refused_with_554_5_7_1(server, server.submission_port)
    assert server.wait_for_log(
        r"event=connection-refused listener=submission\S* client=127\.0\.0\.1"
    )
    assert greeting(server.host, server.port)[0] == 220  # mx has no such rule


def test_submission_limited_to_an_office_network_serves_the_office(
    start: Start, test_ca: TestCA
) -> None:
    server = start(
        _setup(test_ca.tls_files(), "alice"),
        networks='[[network]]\nname = "office"\ncidrs = ["127.0.0.0/8"]\n',
        submission_rules='allow_networks = ["office"]',
    )
    with _login(server, test_ca, "alice") as smtp:
        smtp.sendmail("alice@users.test", ["x@example.org"], message("alice@users.test", "x", "o1"))
    maildir.wait_for_marker(server.mailbox("x", "example.org"), "o1")


# ---- §6: sending limits ----------------------------------------------------------------------


def _login(server: PolicyHato, test_ca: TestCA, user: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP(LOOPBACK, server.submission_port, timeout=30)
    smtp.starttls(context=test_ca.client_context())
    smtp.login(f"{user}@users.test", USER_PASSWORD)
    return smtp


def _send(smtp: smtplib.SMTP, user: str, recipients: list[str], marker: str) -> None:
    sender = f"{user}@users.test"
    smtp.sendmail(sender, recipients, message(sender, recipients[0], marker))


def _temp_refused(reply: tuple[int, bytes]) -> None:
    # RFC 5321 §4.2.5: 451 is transient, the client's queue retries; RFC 3463 X.7.1.
    assert reply[0] == 451, reply
    assert reply[1].startswith(b"4.7.1 "), reply


def test_messages_and_recipients_per_hour_answer_451_4_7_1(start: Start, test_ca: TestCA) -> None:
    server = start(
        _setup(test_ca.tls_files(), "alice", "bob", "carol"),
        limits="messages_per_hour = 2\nrecipients_per_hour = 3",
    )
    with _login(server, test_ca, "alice") as smtp:
        _send(smtp, "alice", ["m@example.org"], "m1")
        _send(smtp, "alice", ["m@example.org"], "m2")
        _temp_refused(smtp.mail("alice@users.test"))
    assert len(maildir.wait_for_count(server.mailbox("m", "example.org"), 2, 20)) == 2

    with _login(server, test_ca, "bob") as smtp:  # another user has a count of their own
        assert smtp.mail("bob@users.test")[0] == 250
        for n in range(1, 4):  # reserved at RCPT, given back by the RSET
            assert smtp.rcpt(f"z{n}@example.org")[0] == 250
        _temp_refused(smtp.rcpt("z4@example.org"))
        assert smtp.rset()[0] == 250
        assert smtp.mail("bob@users.test")[0] == 250
        for n in range(1, 4):
            assert smtp.rcpt(f"r{n}@example.org")[0] == 250
        _temp_refused(smtp.rcpt("r4@example.org"))
        code, _ = smtp.data(message("bob@users.test", "r1@example.org", "r-1"))
        assert code == 250  # the three accepted recipients still get the message
    maildir.wait_for_marker(server.mailbox("r3", "example.org"), "r-1")
    assert not server.mailbox("r4", "example.org").exists()

    # A connection lost in the middle of a transaction gives its reservation back too.
    smtp = _login(server, test_ca, "carol")
    assert smtp.mail("carol@users.test")[0] == 250
    for n in range(1, 4):
        assert smtp.rcpt(f"c{n}@example.org")[0] == 250
    gone = server.log_text().count("event=disconnect ")
    smtp.close()  # the socket closed: no QUIT, no RSET
    deadline = time.monotonic() + 20
    while server.log_text().count("event=disconnect ") <= gone:
        assert time.monotonic() < deadline, "the server did not see the connection end"
        time.sleep(0.05)
    with _login(server, test_ca, "carol") as smtp:
        assert smtp.mail("carol@users.test")[0] == 250
        for n in range(1, 4):
            assert smtp.rcpt(f"c{n}@example.org")[0] == 250


def test_a_sending_spike_holds_the_account_and_logs_an_alert(start: Start, test_ca: TestCA) -> None:
    server = start(
        _setup(test_ca.tls_files(), "alice", "bob"),
        limits="spike_recipients = 5\nspike_hold = true\nspike_window = 300",
    )
    with _login(server, test_ca, "alice") as smtp:
        _send(smtp, "alice", [f"s{n}@example.org" for n in range(1, 5)], "s-1")
        _send(smtp, "alice", ["s5@example.org"], "s-2")  # the 5th recipient: a spike
        _temp_refused(smtp.mail("alice@users.test"))
    assert server.wait_for_log(
        r"event=sending-spike user=alice@users\.test recipients=5 messages=2 .*held=yes"
    )
    with _login(server, test_ca, "alice") as smtp:  # held: a new session changes nothing
        _temp_refused(smtp.mail("alice@users.test"))
    with _login(server, test_ca, "bob") as smtp:  # only the spiking account is held
        _send(smtp, "bob", ["s1@example.org"], "s-3")
    maildir.wait_for_marker(server.mailbox("s1", "example.org"), "s-3")


def test_an_admin_lists_held_users_and_releases_one_while_the_server_runs(
    start: Start, test_ca: TestCA
) -> None:
    """`hato user held` / `hato user release`: the hold in DATA_DIR/limits.db is read per
    command, so the next MAIL FROM after a release is accepted without a restart."""
    server = start(_setup(test_ca.tls_files(), "alice", "bob"), limits="spike_recipients = 3")
    assert server.hato("user", "held").returncode == 0
    refused = server.hato("user", "release", "alice@users.test")  # not held: like "not found"
    assert refused.returncode == 1 and "alice@users.test is not held" in refused.stderr
    with _login(server, test_ca, "alice") as smtp:
        _send(smtp, "alice", [f"h{n}@example.org" for n in range(1, 4)], "h-1")  # a spike
        _temp_refused(smtp.mail("alice@users.test"))
    held = server.hato("user", "held")
    assert held.returncode == 0, held.stderr
    assert re.fullmatch(
        r"alice@users\.test held until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n", held.stdout
    )
    released = server.hato("user", "release", "Alice@users.test")
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith("released alice@users.test")
    # Who released the hold is in the server's log (it did it), as `hato queue release`'s.
    assert "admin-unhold" not in released.stderr
    assert server.wait_for_log(r"event=admin-unhold user=alice@users\.test")
    assert server.hato("user", "held").stdout == ""
    with _login(server, test_ca, "alice") as smtp:  # the same running server takes it now
        _send(smtp, "alice", ["h9@example.org"], "h-2")
    maildir.wait_for_marker(server.mailbox("h9", "example.org"), "h-2")


class WorkersHato(PolicyHato):
    """Two server processes (`[server] workers = 2`) on one data directory."""

    def _config_text(self) -> str:
        return super()._config_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)


def test_parallel_sessions_never_get_more_recipients_than_the_limit(
    tmp_path: Path, test_ca: TestCA
) -> None:
    """20 sessions of one user, each with a MAIL FROM open, then all asking for 5 recipients
    at once against 30 an hour: the limit is reserved at RCPT, atomically in the limits
    database every worker shares, so exactly 30 are accepted and delivered (before, each
    session saw only what was already delivered: all 100)."""
    server = WorkersHato(
        tmp_path / "data",
        _setup(test_ca.tls_files(), "alice"),
        limits="messages_per_hour = 0\nrecipients_per_hour = 30\nspike_recipients = 0",
    )
    server.start()
    sessions, each = 20, 5
    ready = threading.Barrier(sessions)
    accepted: list[int] = []
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            with _login(server, test_ca, "alice") as smtp:
                assert smtp.mail("alice@users.test")[0] == 250
                ready.wait(timeout=60)
                ok = [rcpt for k in range(each) if _rcpt(smtp, rcpt := f"r{n}-{k}@example.org")]
                if ok:
                    assert smtp.data(message("alice@users.test", ok[0], f"race-{n}"))[0] == 250
                accepted.append(len(ok))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            ready.abort()

    try:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert sum(accepted) == 30, accepted
        delivered = server.mailboxes() / "example.org"
        deadline = time.monotonic() + 20
        while len(maildir.all_messages(delivered)) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(maildir.all_messages(delivered)) == 30
        with _login(server, test_ca, "alice") as smtp:  # the hour's 30 are used up
            assert smtp.mail("alice@users.test")[0] == 250
            _temp_refused(smtp.rcpt("late@example.org"))
        server.stop()  # new processes read the same limits database
        server.start()
        with _login(server, test_ca, "alice") as smtp:
            assert smtp.mail("alice@users.test")[0] == 250
            _temp_refused(smtp.rcpt("later@example.org"))
    finally:
        server.stop()
        print("--- hato log ---\n" + "\n".join(server.log_text().splitlines()[-100:]))


def _rcpt(smtp: smtplib.SMTP, address: str) -> bool:
    """Whether the recipient was accepted; a refusal must be the limit's 451 4.7.1."""
    reply = smtp.rcpt(address)
    if reply[0] == 250:
        return True
    _temp_refused(reply)
    return False
