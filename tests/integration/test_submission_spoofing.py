"""Sender–login binding and own-domain spoofing on the real server (issue 3, "Must show").

After AUTH a user may use as envelope sender and as every From: address only what they own:
their address, its +tag forms, aliases that deliver to them; anything else gets 553 5.7.1
(RFC 6409 §6.1 lets a submission server refuse unauthorized senders; RFC 3463 X.7.1).
On mx, a sender in one of our own domains without AUTH gets 550 5.7.1 (the classic
direct-to-MX spoof of our own users).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from peers import clients, maildir
from peers.clients import enhanced, logged_in
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import USER_PASSWORD
from peers.tls import TestCA

NOT_OWNED = (553, b"5.7.1")


@pytest.mark.parametrize(
    "sender",
    [
        "bob@users.test",  # another user
        "bob+tag@users.test",  # another user's +tag form
        "someone@other.test",  # another domain
        "x@example.org",  # our own (accept-any) domain, but not this user's
        "postmaster@users.test",
        "team@users.test",  # an alias, but not one that delivers to carol
        "sales@users.test",
    ],
)
def test_mail_from_not_owned_is_refused(
    shared_submission: HatoServer, test_ca: TestCA, sender: str
) -> None:
    with logged_in(shared_submission, test_ca, "carol@users.test") as session:
        assert enhanced(session.command(f"MAIL FROM:<{sender}>".encode())) == NOT_OWNED
        # The session goes on: the user's own address is still fine.
        assert session.command(b"MAIL FROM:<carol@users.test>")[0] == 250


@pytest.mark.parametrize(
    "sender",
    [
        "alice@users.test",
        "alice+news@users.test",  # +tag form
        "Alice@USERS.test",  # RFC 5321 §2.4: domains are case-insensitive
        "sales@users.test",  # alias delivering to alice only
        "team@users.test",  # alias delivering to alice and bob
    ],
)
def test_owned_senders_are_accepted_and_delivered(
    shared_submission: HatoServer, test_ca: TestCA, sender: str
) -> None:
    server = shared_submission
    marker = uuid.uuid4().hex
    with logged_in(server, test_ca, "alice@users.test") as session:
        assert session.command(f"MAIL FROM:<{sender}>".encode())[0] == 250
        assert session.command(b"RCPT TO:<carol@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        body = clients.message(sender, "carol@users.test", marker)
        assert session.command(body + b".")[0] == 250
    found = maildir.wait_for_marker(server.mailbox("carol", "users.test"), marker)
    assert len(found) == 1
    # The domain may come back lower-cased; the local part is the user's own.
    assert f"Return-Path: <{sender}>".lower().encode() in found[0].read_bytes().lower()


@pytest.mark.parametrize(
    "header",
    [
        b"From: bob@users.test",
        b"From: Bob <bob@users.test>",
        b"From: =?utf-8?q?Alice?= <bob@users.test>",
        b"From: alice@users.test, bob@users.test",  # RFC 5322 §3.6.2: every author counts
        b"From: Team: alice@users.test, bob@users.test;",  # a group
        b"From: someone@other.test",
        b"FROM:bob@users.test",  # RFC 5322 §1.2.2: field names are case-insensitive
        b"From:\r\n bob@users.test",  # RFC 5322 §2.2.3: folded
        b"From: alice@users.test\r\nFrom: bob@users.test",  # two From: fields
    ],
)
def test_from_header_not_owned_is_refused_after_data(
    shared_submission: HatoServer, test_ca: TestCA, header: bytes
) -> None:
    server = shared_submission
    marker = uuid.uuid4().hex
    with logged_in(server, test_ca, "alice@users.test") as session:
        assert session.command(b"MAIL FROM:<alice@users.test>")[0] == 250
        assert session.command(b"RCPT TO:<carol@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        message = (
            header + b"\r\nTo: carol@users.test\r\nSubject: spoof\r\n"
            + maildir.MARKER_HEADER + f": {marker}\r\n\r\nspoofed\r\n.".encode()
        )  # fmt: skip
        assert enhanced(session.command(message)) == NOT_OWNED
        assert session.command(b"NOOP")[0] == 250
    # Give the queue a moment: a refused message must never be delivered.
    sentinel = uuid.uuid4().hex
    with logged_in(server, test_ca, "alice@users.test") as session:
        session.command(b"MAIL FROM:<alice@users.test>")
        session.command(b"RCPT TO:<carol@users.test>")
        session.command(b"DATA")
        sent = clients.message("alice@users.test", "carol@users.test", sentinel)
        assert session.command(sent + b".")[0] == 250
    box = server.mailbox("carol", "users.test")
    assert maildir.wait_for_marker(box, sentinel)
    assert maildir.find_marker(maildir.messages(box), marker) == []


@pytest.mark.parametrize(
    "header",
    [
        b"From: alice@users.test",
        b'From: "bob@users.test" <alice@users.test>',  # a display name is not an address
        b"From: <Alice+x@Users.Test>",
        b"From: sales@users.test",
    ],
)
def test_from_header_owned_is_accepted(
    shared_submission: HatoServer, test_ca: TestCA, header: bytes
) -> None:
    with logged_in(shared_submission, test_ca, "alice@users.test") as session:
        assert session.command(b"MAIL FROM:<alice@users.test>")[0] == 250
        assert session.command(b"RCPT TO:<carol@users.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        assert session.command(header + b"\r\nSubject: ok\r\n\r\nfine\r\n.")[0] == 250


@pytest.mark.parametrize(
    "sender",
    [
        "alice@users.test",
        "alice+tag@users.test",
        "ALICE@USERS.TEST",
        "sales@users.test",
        "anything@example.org",  # accept-any domain: no account, still ours
    ],
)
def test_direct_to_mx_with_our_own_domain_is_refused(
    shared_submission: HatoServer, sender: str
) -> None:
    server = shared_submission
    with RawSession(server.host, server.port) as session:
        assert session.reply()[0] == 220
        assert session.command(b"EHLO client.test")[0] == 250
        code, lines = session.command(f"MAIL FROM:<{sender}>".encode())
        assert (code, lines[-1][4:9]) == (550, b"5.7.1"), lines
        assert b"submission" in lines[-1], lines
        # A foreign sender may still send to our users on mx.
        assert session.command(b"MAIL FROM:<friend@other.test>")[0] == 250
        assert session.command(b"RCPT TO:<alice@users.test>")[0] == 250


def test_swaks_spoof_of_another_user_is_refused(
    shared_submission: HatoServer, test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    done = clients.swaks(
        require_peer("swaks"),
        shared_submission.host,
        shared_submission.submission_port,
        "--tls", *clients.swaks_tls(test_ca.ca_cert),
        "--auth", "PLAIN", "--auth-user", "alice@users.test", "--auth-password", USER_PASSWORD,
        "--from", "bob@users.test", "--to", "carol@users.test",
    )  # fmt: skip
    errors = clients.swaks_errors(done.stdout)
    assert len(errors) == 1 and errors[0].startswith("553 5.7.1"), done.stdout
