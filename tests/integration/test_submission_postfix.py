"""The OP25B home server, end to end: a private Postfix relays through Hato's submission port
with STARTTLS required (`smtp_tls_security_level = encrypt`) and SASL credentials, and the
message lands in the Maildir of a local user of Hato (RFC 6409, RFC 3207, RFC 4954)."""

from __future__ import annotations

import re
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import clients, maildir
from peers.hato import HatoServer
from peers.postfix_relay import PostfixRelay
from peers.server import USER_PASSWORD
from peers.tls import TestCA

ALICE = "alice@users.test"


@pytest.fixture
def home_server(
    hato_submission: HatoServer,
    test_ca: TestCA,
    workdir: Path,
    require_peer: Callable[[str], str],
) -> Iterator[PostfixRelay]:
    require_peer("postfix")
    relay = PostfixRelay(
        workdir / "home",
        hato_submission.host,
        hato_submission.submission_port,
        test_ca.ca_cert,
        ALICE,
        USER_PASSWORD,
    )
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def _wait_for_log(relay: PostfixRelay, pattern: str, timeout: float) -> re.Match[str] | None:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, relay.log_text(), re.MULTILINE)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def test_postfix_relays_through_submission_to_a_local_mailbox(
    home_server: PostfixRelay, hato_submission: HatoServer
) -> None:
    marker = uuid.uuid4().hex
    with smtplib.SMTP(home_server.host, home_server.port, "lan-pc.home.test", timeout=30) as lan:
        refused = lan.sendmail(
            ALICE, ["bob@users.test"], clients.message(ALICE, "bob@users.test", marker)
        )
    assert refused == {}

    box = hato_submission.mailbox("bob", "users.test")
    found = maildir.wait_for_marker(box, marker, timeout=60)
    assert len(found) == 1, f"not delivered by Hato; postfix log:\n{home_server.log_text()}"
    stored = found[0].read_bytes()
    assert b"Return-Path: <alice@users.test>" in stored
    sent = _wait_for_log(
        home_server,
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{hato_submission.submission_port}.*status=sent",
        20,
    )
    assert sent, home_server.log_text()
    # Postfix really used TLS (its smtp client logs the verified connection).
    assert re.search(
        r"(Trusted|Verified) TLS connection established to 127\.0\.0\.1", home_server.log_text()
    ), home_server.log_text()
    assert hato_submission.wait_for_log(
        rf"event=auth session=\S+ client=127\.0\.0\.1 user={re.escape(ALICE)} result=ok"
    ), hato_submission.log_text()


def test_postfix_relays_to_a_remote_domain_which_hato_queues(
    home_server: PostfixRelay, hato_submission: HatoServer
) -> None:
    marker = uuid.uuid4().hex
    with smtplib.SMTP(home_server.host, home_server.port, "lan-pc.home.test", timeout=30) as lan:
        lan.sendmail(
            ALICE, ["friend@remote.test"], clients.message(ALICE, "friend@remote.test", marker)
        )
    # Hato accepted it for relaying (250 to Postfix) and queued it for the remote domain: its
    # queue takes it up for outbound delivery (on loopback without DNS that ends in a deferral
    # or a bounce to alice; either way never a local mailbox for friend@remote.test).
    assert _wait_for_log(home_server, r"to=<friend@remote\.test>.*status=sent", 60), (
        home_server.log_text()
    )
    assert hato_submission.wait_for_log(
        r"hato\.queue: event=(deferred|failed|delivered)\b.*to=<friend@remote\.test>", 20
    ), hato_submission.log_text()
    assert maildir.find_marker(maildir.all_messages(hato_submission.mailboxes()), marker) == []
