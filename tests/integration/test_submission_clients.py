"""Real clients on Hato's submission ports: swaks, msmtp (GNU SASL, so SCRAM-SHA-256 too),
Python's smtplib and aiosmtplib, each checking Hato's certificate against the test CA.

RFC 6409 (submission), RFC 3207 (STARTTLS on 587), RFC 8314 (implicit TLS on 465), RFC 4954
(AUTH), RFC 4616 (PLAIN), RFC 7677 / RFC 5802 (SCRAM-SHA-256).
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import uuid
from collections.abc import Callable

import aiosmtplib
import pytest
from peers import clients, maildir
from peers.hato import HatoServer
from peers.server import USER_PASSWORD
from peers.tls import TestCA

ALICE = "alice@users.test"
BOB = "bob@users.test"


def _delivered_to_bob(server: HatoServer, marker: str) -> bytes:
    found = maildir.wait_for_marker(server.mailbox("bob", "users.test"), marker)
    assert len(found) == 1, f"expected one delivery of {marker}, got {found}"
    return found[0].read_bytes()


# ---- swaks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_then_auth_delivers(
    hato_submission: HatoServer,
    test_ca: TestCA,
    require_peer: Callable[[str], str],
    mechanism: str,
) -> None:
    marker = uuid.uuid4().hex
    done = clients.swaks(
        require_peer("swaks"),
        hato_submission.host,
        hato_submission.submission_port,
        "--tls", *clients.swaks_tls(test_ca.ca_cert),
        "--auth", mechanism, "--auth-user", ALICE, "--auth-password", USER_PASSWORD,
        "--from", ALICE, "--to", BOB,
        "--header", f"{maildir.MARKER_HEADER.decode()}: {marker}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert clients.swaks_errors(done.stdout) == [], done.stdout
    plain = [
        r
        for r in clients.swaks_replies(done.stdout)
        if r not in set(clients.swaks_tls_replies(done.stdout))
    ]
    # RFC 4954 §4 / RFC 3207 §4.2: AUTH is offered only once the session is encrypted.
    assert "250 STARTTLS" in plain and not any("AUTH" in r for r in plain), done.stdout
    tls_replies = clients.swaks_tls_replies(done.stdout)
    assert "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in tls_replies, done.stdout
    assert any(r.startswith("235 2.7.0") for r in tls_replies), done.stdout
    stored = _delivered_to_bob(hato_submission, marker)
    assert b"Return-Path: <alice@users.test>" in stored


def test_swaks_implicit_tls_delivers(
    hato_submission: HatoServer, test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    marker = uuid.uuid4().hex
    done = clients.swaks(
        require_peer("swaks"),
        hato_submission.host,
        hato_submission.submissions_port,
        "--tlsc", *clients.swaks_tls(test_ca.ca_cert),
        "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", USER_PASSWORD,
        "--from", ALICE, "--to", BOB,
        "--header", f"{maildir.MARKER_HEADER.decode()}: {marker}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    replies = clients.swaks_replies(done.stdout)
    # RFC 8314 §3.3: everything, the greeting included, comes over TLS.
    assert replies == clients.swaks_tls_replies(done.stdout), done.stdout
    # RFC 3207 §4: STARTTLS is not offered inside TLS; AUTH is offered right away.
    assert "250 STARTTLS" not in replies and "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in replies
    _delivered_to_bob(hato_submission, marker)


@pytest.mark.parametrize("port_name", ["submission", "submissions"])
def test_swaks_wrong_password_gets_535(
    hato_submission: HatoServer,
    test_ca: TestCA,
    require_peer: Callable[[str], str],
    port_name: str,
) -> None:
    tls, port = (
        ("--tls", hato_submission.submission_port)
        if port_name == "submission"
        else ("--tlsc", hato_submission.submissions_port)
    )
    done = clients.swaks(
        require_peer("swaks"),
        hato_submission.host,
        port,
        tls, *clients.swaks_tls(test_ca.ca_cert),
        "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "not-the-password",
        "--from", ALICE, "--to", BOB,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    errors = clients.swaks_errors(done.stdout)
    # RFC 4954 §6: 535 5.7.8 for bad credentials, and no MAIL FROM was ever sent.
    assert len(errors) == 1 and errors[0].startswith("535 5.7.8"), done.stdout
    assert "MAIL FROM" not in done.stdout
    found = hato_submission.wait_for_log(r"^.*event=auth-failed .*$")
    assert found, hato_submission.log_text()
    line = found.group(0)
    assert "client=127.0.0.1" in line and f"user={ALICE}" in line, line
    assert "not-the-password" not in hato_submission.log_text()


def test_swaks_sees_no_auth_before_starttls(
    hato_submission: HatoServer, require_peer: Callable[[str], str]
) -> None:
    done = clients.swaks(
        require_peer("swaks"),
        hato_submission.host,
        hato_submission.submission_port,
        "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", USER_PASSWORD,
        "--from", ALICE, "--to", BOB,
    )  # fmt: skip
    # RFC 4954 §4: no AUTH in the EHLO reply before TLS, so swaks gives up before sending it.
    assert done.returncode != 0, done.stdout
    assert "Host did not advertise authentication" in done.stdout + done.stderr, done.stdout
    assert "AUTH PLAIN" not in done.stdout
    assert "event=auth " not in hato_submission.log_text()


def test_swaks_mail_before_auth_gets_530(
    hato_submission: HatoServer, test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    swaks = require_peer("swaks")
    server = hato_submission
    after_tls = clients.swaks(
        swaks, server.host, server.submission_port,
        "--tls", *clients.swaks_tls(test_ca.ca_cert), "--from", ALICE, "--to", BOB,
    )  # fmt: skip
    errors = clients.swaks_errors(after_tls.stdout)
    # RFC 4954 §6: 530 5.7.0 Authentication required.
    assert len(errors) == 1 and errors[0].startswith("530 5.7.0"), after_tls.stdout
    no_tls = clients.swaks(swaks, server.host, server.submission_port, "--from", ALICE, "--to", BOB)
    errors = clients.swaks_errors(no_tls.stdout)
    # RFC 3207 §4: 530 5.7.0 before STARTTLS on a port that requires it.
    assert len(errors) == 1 and errors[0].startswith("530 5.7.0"), no_tls.stdout
    assert maildir.all_messages(server.mailboxes()) == []


# ---- msmtp (GnuTLS, GNU SASL) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("port_name", "mechanism"),
    [
        ("submission", "on"),
        ("submission", "scram-sha-256"),
        ("submissions", "on"),
        ("submissions", "scram-sha-256"),
    ],
)
def test_msmtp_delivers(
    hato_submission: HatoServer,
    test_ca: TestCA,
    require_peer: Callable[[str], str],
    port_name: str,
    mechanism: str,
) -> None:
    server = hato_submission
    marker = uuid.uuid4().hex
    implicit = port_name == "submissions"
    port = server.submissions_port if implicit else server.submission_port
    done = clients.msmtp(
        require_peer("msmtp"),
        server.host,
        port,
        test_ca.ca_cert,
        ALICE,
        USER_PASSWORD,
        ALICE,
        [BOB],
        clients.message(ALICE, BOB, marker),
        f"--auth={mechanism}",
        f"--tls-starttls={'off' if implicit else 'on'}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dialog = clients.msmtp_dialog(done.stdout + done.stderr)
    assert ("--> STARTTLS" in dialog) is not implicit, dialog
    if mechanism == "scram-sha-256":
        # RFC 7677 / RFC 5802 §5: client-first, server-first, client-final, then the server's
        # signature (v=...) which GNU SASL checks before it answers with an empty line.
        assert "--> AUTH SCRAM-SHA-256" in dialog, dialog
        challenges = [line for line in dialog if line.startswith("<-- 334")]
        assert len(challenges) == 3, dialog
    assert "<-- 235 2.7.0 Authentication successful" in dialog, dialog
    _delivered_to_bob(server, marker)


def test_msmtp_scram_with_a_wrong_password_gets_535(
    hato_submission: HatoServer, test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    server = hato_submission
    done = clients.msmtp(
        require_peer("msmtp"),
        server.host,
        server.submission_port,
        test_ca.ca_cert,
        ALICE,
        "wrong-password",
        ALICE,
        [BOB],
        clients.message(ALICE, BOB, uuid.uuid4().hex),
        "--auth=scram-sha-256",
    )
    assert done.returncode != 0
    dialog = clients.msmtp_dialog(done.stdout + done.stderr)
    assert any(re.match(r"<-- 535 5\.7\.8", line) for line in dialog), dialog
    assert not any(line.startswith("--> MAIL FROM") for line in dialog), dialog
    # The fail2ban line names the mechanism, as it does for PLAIN with an initial response.
    found = server.wait_for_log(r"^.*event=auth-failed .*$")
    assert found, server.log_text()
    assert "mechanism=SCRAM-SHA-256" in found.group(0), found.group(0)


# ---- Python smtplib and aiosmtplib ------------------------------------------------------------


def test_smtplib_starttls_login_delivers(hato_submission: HatoServer, test_ca: TestCA) -> None:
    server = hato_submission
    marker = uuid.uuid4().hex
    with smtplib.SMTP(server.host, server.submission_port, "client.test", timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.starttls(context=test_ca.client_context())[0] == 220
        client.ehlo()
        assert client.has_extn("auth")
        assert client.login(ALICE, USER_PASSWORD)[0] == 235
        assert client.sendmail(ALICE, [BOB], clients.message(ALICE, BOB, marker)) == {}
    _delivered_to_bob(server, marker)


def test_smtplib_implicit_tls_and_a_bad_login(hato_submission: HatoServer, test_ca: TestCA) -> None:
    server = hato_submission
    marker = uuid.uuid4().hex
    context = test_ca.client_context()
    with smtplib.SMTP_SSL(
        server.host, server.submissions_port, "client.test", timeout=30, context=context
    ) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(ALICE, "wrong")
        assert (failed.value.smtp_code, failed.value.smtp_error[:5]) == (535, b"5.7.8")
        # RFC 4954 §4: after a failed AUTH the client may try again in the same session.
        assert client.login(ALICE, USER_PASSWORD)[0] == 235
        assert client.sendmail(ALICE, [BOB], clients.message(ALICE, BOB, marker)) == {}
    _delivered_to_bob(server, marker)


@pytest.mark.parametrize("port_name", ["submission", "submissions"])
def test_aiosmtplib_delivers(hato_submission: HatoServer, test_ca: TestCA, port_name: str) -> None:
    server = hato_submission
    marker = uuid.uuid4().hex
    implicit = port_name == "submissions"

    async def send() -> dict[str, object]:
        refused, _ = await aiosmtplib.send(
            clients.message(ALICE, BOB, marker),
            sender=ALICE,
            recipients=[BOB],
            hostname=server.host,
            port=server.submissions_port if implicit else server.submission_port,
            username=ALICE,
            password=USER_PASSWORD,
            use_tls=implicit,
            start_tls=not implicit,
            tls_context=test_ca.client_context(),
            local_hostname="client.test",
            timeout=30,
        )
        return dict(refused)

    assert asyncio.run(send()) == {}
    _delivered_to_bob(server, marker)
