"""A client's own Return-Path, Content-Length, Bcc and Resent-Bcc never reach a stored copy,
whatever the door (mx on 25, submission on 587 after AUTH, hato-sendmail): only the
Return-Path our delivery writes is there (RFC 5321 §4.4; RFC 5322 §3.6.3; Postfix's
message_drop_headers). Recipients named by Bcc with -t still get the message. And no option of
hato-sendmail's that becomes header text (-F, -f, -r) can add a field of the caller's."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from peers import clients, maildir
from peers.hato import HatoServer
from peers.server import USER_PASSWORD
from peers.tls import TestCA

ALICE = "alice@users.test"
BOB = "bob@users.test"
CLIENT_FIELDS = (
    ("Return-Path", "<forged@evil.test>"),
    ("Content-Length", "3"),
    ("Resent-Bcc", "<hidden@evil.test>"),
)


def _stored(server: HatoServer, user: str, marker: str) -> list[str]:
    found = maildir.wait_for_marker(server.mailbox(user, "users.test"), marker)
    assert len(found) == 1, f"expected one delivery of {marker} to {user}, got {found}"
    return maildir.header_fields(found[0].read_bytes())


def _assert_only_ours(fields: list[str], sender: str) -> None:
    lowered = [f.lower() for f in fields]
    assert [f for f in fields if f.lower().startswith("return-path:")] == [
        f"Return-Path: <{sender}>"
    ], fields
    assert fields[0] == f"Return-Path: <{sender}>"  # delivery's, on top
    for name in ("content-length:", "bcc:", "resent-bcc:"):
        assert not any(f.startswith(name) for f in lowered), fields
    assert "forged@evil.test" not in " ".join(fields)


def _swaks_headers(marker: str) -> list[str]:
    args = ["--header", f"{maildir.MARKER_HEADER.decode()}: {marker}"]
    for name, value in CLIENT_FIELDS:
        args += ["--add-header", f"{name}: {value}"]
    return args


def test_mx_on_25_stores_no_return_path_of_the_clients(
    shared_submission: HatoServer, require_peer: Callable[[str], str]
) -> None:
    marker = uuid.uuid4().hex
    done = clients.swaks(
        require_peer("swaks"),
        shared_submission.host,
        shared_submission.port,
        "--from", "sender@client.test", "--to", BOB,
        *_swaks_headers(marker),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_only_ours(_stored(shared_submission, "bob", marker), "sender@client.test")


def test_submission_on_587_stores_no_return_path_of_the_clients(
    shared_submission: HatoServer, test_ca: TestCA, require_peer: Callable[[str], str]
) -> None:
    marker = uuid.uuid4().hex
    done = clients.swaks(
        require_peer("swaks"),
        shared_submission.host,
        shared_submission.submission_port,
        "--tls", *clients.swaks_tls(test_ca.ca_cert),
        "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", USER_PASSWORD,
        "--from", ALICE, "--to", BOB,
        *_swaks_headers(marker),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_only_ours(_stored(shared_submission, "bob", marker), ALICE)


def test_hato_sendmail_stores_no_return_path_and_bcc_recipients_still_get_it(
    shared_submission: HatoServer,
) -> None:
    marker = uuid.uuid4().hex
    message = (
        "Return-Path: <forged@evil.test>\n"
        "Content-Length: 3\n"
        "From: <alice@users.test>\n"
        "To: <bob@users.test>\n"
        "Bcc: <carol@users.test>\n"
        "Resent-Bcc: <hidden@evil.test>\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\n"
        "Subject: cron\n\nhello\n"
    ).encode()
    done = shared_submission.sendmail(["-t", "-i", "-f", ALICE], message)
    assert done.returncode == 0, done.stderr
    for user in ("bob", "carol"):  # RFC 5322 §3.6.3: Bcc recipients get it, without the field
        _assert_only_ours(_stored(shared_submission, user, marker), ALICE)


def test_hato_sendmail_refuses_a_full_name_with_a_line_break(shared_submission: HatoServer) -> None:
    for args in (["-F", "Name\r\nX-Evil: 1"], ["-f", "alice@users.test\nX-Evil: 1"]):
        done = shared_submission.sendmail([*args, "-i", BOB], b"Subject: x\n\nhi\n")
        assert done.returncode == 64, done  # EX_USAGE: nothing was sent
        assert done.stderr.count(b"\n") == 1 and b"control character" in done.stderr, done
