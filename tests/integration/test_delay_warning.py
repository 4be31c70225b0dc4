"""The delayed-delivery DSN end to end ([queue] delay_warning_time; RFC 3464 §2.3.3
action=delayed, RFC 3461 §4.1 NOTIFY=DELAY): the real `hato serve` sends mail to a next hop
that never answers (the test DNS server's MX on a loopback port nobody listens on: every
attempt is a temporary failure) and, once the message is older than the configured warning
time and an attempt defers it again, tells the sender exactly once, for the recipients that
asked for it; never for NOTIFY=NEVER nor a NOTIFY without DELAY.

The server's clock is the machine's (a real `hato serve` has no clock to replace): the test
waits until the message is older than the one-second warning time, then makes it due with
`hato queue flush`, as an admin would (the retry is minutes away). Every other wait is for an
event (a log line, a file), with a generous bound.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.net import free_port
from peers.outbound_hato import SENDER, OutboundConfig, OutboundHato, message
from peers.server import USER_PASSWORD, submission_setup
from peers.tls import TestCA

from dnsserver import DnsTestServer, ZoneValue

WARNING = 1  # [queue] delay_warning_time, seconds
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    "later.test": {"MX": [(10, "mx.later.test")]},
    "mx.later.test": {"A": ["127.0.0.1"]},
}


@pytest.fixture
def hato(workdir: Path, test_ca: TestCA) -> Iterator[OutboundHato]:
    setup = dataclasses.replace(submission_setup(test_ca.tls_files()), delay_warning_time=WARNING)
    with DnsTestServer(ZONE) as dns:
        # Nothing listens on the port: connection refused, a temporary failure (RFC 5321
        # §4.5.4.1), at every attempt.
        config = OutboundConfig(dns.nameserver, free_port())
        server = OutboundHato(workdir / "data", test_ca, config, setup)
        server.start()
        yield server
        server.stop()


def _submit(hato: OutboundHato, recipients: dict[str, str], marker: str) -> float:
    """One message from alice to `recipients` (address: RCPT TO parameters); the time its
    250 came (the message was received before it)."""
    with smtplib.SMTP(hato.host, hato.submission_port, timeout=30) as smtp:
        smtp.starttls(context=hato.ca.client_context())
        smtp.login(SENDER, USER_PASSWORD)
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 250
        for address, params in recipients.items():
            assert smtp.rcpt(address, params.split() if params else [])[0] == 250
        assert smtp.data(message(next(iter(recipients)), marker))[0] == 250
    return time.time()


def _attempt(hato: OutboundHato, attempts: int, recipients: list[str]) -> None:
    """Make the queue due (`hato queue flush`) and wait until every recipient was deferred
    `attempts` times."""
    if attempts > 1:
        hato.flush()
    for address in recipients:
        hato.wait_event("deferred", to=f"<{address}>", attempts=str(attempts))


def _queue_id(hato: OutboundHato, address: str) -> str:
    [line, *_] = hato.events("deferred", to=f"<{address}>")
    found = re.search(r"\bid=(\S+)", line)
    assert found is not None, line
    return found.group(1)


def test_one_delayed_dsn_for_the_recipients_that_asked(hato: OutboundHato) -> None:
    asked, marker = uuid.uuid4().hex, uuid.uuid4().hex
    # Message 1: no NOTIFY (RFC 3461 §4.1: failures and delays are reported), NOTIFY=DELAY,
    # and one that asked for failures only. Message 2: none of its recipients asked.
    first = {"ann@later.test": "", "ben@later.test": "NOTIFY=DELAY,FAILURE",
             "cat@later.test": "NOTIFY=FAILURE"}  # fmt: skip
    second = {"dan@later.test": "NOTIFY=NEVER", "eve@later.test": "NOTIFY=SUCCESS,FAILURE"}
    received = max(_submit(hato, first, asked), _submit(hato, second, marker))
    everyone = [*first, *second]
    _attempt(hato, 1, everyone)
    # The messages' age must pass the warning time before the next attempt: a condition on
    # the clock (the server's is the machine's), not a wait for the server.
    while time.time() < received + WARNING + 0.1:
        time.sleep(0.1)
    for attempts in (2, 3, 4):
        # Attempt 4's deferral is logged only once attempt 3 (and its DSN, if any) is done.
        _attempt(hato, attempts, everyone)

    warned = hato.events("dsn-queued", action="delayed")
    assert len(warned) == 1, warned
    assert f"id={_queue_id(hato, 'ann@later.test')} " in warned[0] + " ", warned
    assert "nrcpt=2" in warned[0] and f"to=<{SENDER}>" in warned[0], warned
    assert not hato.events("dsn-queued", id=_queue_id(hato, "dan@later.test"))

    # The notice reaches alice's mailbox: RFC 3464 multipart/report, one block per
    # recipient that asked, Action: delayed with the 4.x.x status of the last attempt.
    box = hato.mailbox("alice", "users.test")
    report = maildir.wait_for_report(box, timeout=60, returning=asked.encode())
    dsn = email.message_from_bytes(report, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = list(dsn.iter_parts())[1].as_string()
    assert status.count("Action: delayed") == 2, status
    assert "ann@later.test" in status and "ben@later.test" in status, status
    assert "cat@later.test" not in status and "Status: 4." in status, status
    assert len(maildir.messages(box)) == 1  # one notice, nothing about message 2
    listed = hato.hato("queue", "list")
    assert all(a in listed.stdout for a in everyone), listed.stdout  # still queued
