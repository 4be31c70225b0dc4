"""[[milter]] end to end against Sendmail's own libmilter (Debian's python3-milter running
peers/libmilter_filter.py): a recipient it refuses at RCPT TO is refused to the client
there, a sender it tempfails or a HELO it rejects at MAIL FROM; what it asks at the end of
the message (added, inserted, changed and deleted fields, a new body, a new sender, added
and deleted recipients, quarantine, discard, a reply code) is what the Maildir and the
queue hold or the client hears; /metrics counts it all per milter."""

from __future__ import annotations

import re
import smtplib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import filtering, maildir
from peers.milters import LibMilter, MilteredHato, OpenDkim
from peers.net import require_peer

# The metrics test counts what the tests before it did on the same module-scoped server: the
# module must run on one xdist worker, in order (scripts/test runs with --dist loadfile).

SENDER = "alice@sender.example"


@pytest.fixture(scope="module")
def hato(tmp_path_factory: pytest.TempPathFactory, libmilter: LibMilter) -> Iterator[MilteredHato]:
    server = MilteredHato(tmp_path_factory.mktemp("hato") / "data", [libmilter.address])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _message(marker: str, body: str, extra: str = "") -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <someone@dest.example>\r\nSubject: lunch\r\n{extra}"
        f"Message-ID: <{marker}@sender.example>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\n{body}\r\n"
    ).encode()


def test_a_recipient_refused_at_rcpt_and_a_sender_tempfailed(hato: MilteredHato) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.mail(SENDER)
        # The milter's smfi_setreply, at RCPT TO, before any DATA.
        assert smtp.rcpt("refused@dest.example") == (550, b"5.1.1 No such user here")
        assert smtp.rcpt("someone@dest.example")[0] == 250
        code, _ = smtp.data(_message("rcpt-1", "hello"))
        assert code == 250
        # A milter's MAIL-stage refusal is the reply to MAIL FROM (as Postfix gives it).
        smtp.rset()
        code, text = smtp.mail("tempfail@sender.example")
        assert (code, text[:5]) == (451, b"4.7.1"), text
        assert smtp.mail(SENDER)[0] == 250
    box = hato.mailbox("someone", "dest.example")
    (found,) = maildir.wait_for_marker(box, "rcpt-1")
    head = filtering.head(found.read_bytes())
    assert b"X-Libmilter: seen" in head and b"X-Libmilter-Top: first" in head
    assert not maildir.messages(hato.mailbox("refused", "dest.example"))


def test_a_helo_refused_by_a_milter_is_refused_at_mail_from(hato: MilteredHato) -> None:
    # Postfix: a milter's HELO reject answers HELO 250 and "persists so it will apply to
    # MAIL FROM" (smtpd.c helo_cmd).
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        assert smtp.ehlo("refused.helo.example")[0] == 250
        assert smtp.mail(SENDER) == (550, b"5.7.1 HELO refused by libmilter")
        assert smtp.ehlo("client.sender.example")[0] == 250
        assert smtp.mail(SENDER)[0] == 250
    assert hato.wait_for_log(r"event=milter-mail-refused .*reply=550"), hato.log_text()[-2000:]


def test_changed_and_deleted_fields_a_new_body_and_quarantine_holds(hato: MilteredHato) -> None:
    sent = _message(
        "mods-1", "CHANGE-SUBJECT DELETE-FIELD REPLACE-BODY QUARANTINE", "X-Delete-Me: yes\r\n"
    )
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.sendmail(SENDER, ["someone@dest.example"], sent)
    # SMFIR_QUARANTINE: committed held (Postfix's hold queue), delivered once released.
    # (The edits made a new spool copy: its queue id is the one queued.)
    held = hato.wait_for_log(r"event=queued id=(\w+) .*held=True")
    assert held and hato.wait_for_log("event=milter-quarantine "), hato.log_text()[-2000:]
    queue_id = held.group(1)
    listing = hato.hato("queue", "list").stdout
    assert queue_id in listing and "held" in listing, listing
    box = hato.mailbox("someone", "dest.example")
    assert not maildir.find_marker(maildir.messages(box), "mods-1")
    released = hato.hato("queue", "release", queue_id)
    assert released.returncode == 0, released
    (found,) = maildir.wait_for_marker(box, "mods-1")
    stored = found.read_bytes()
    head = filtering.head(stored)
    assert [h for h in head if h.startswith(b"Subject:")] == [b"Subject: changed by libmilter"]
    assert not [h for h in head if h.startswith(b"X-Delete-Me")]
    assert b"X-Libmilter: seen" in head
    assert stored.split(b"\r\n\r\n", 1)[1] == b"replaced by libmilter\r\n"


def test_recipients_added_and_deleted(hato: MilteredHato) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.sendmail(SENDER, ["someone@dest.example"], _message("env-1", "ADD-RCPT DEL-RCPT"))
        smtp.sendmail(SENDER, ["third@dest.example"], _message("env-2", "ADD-RCPT"))
    # SMFIR_ADDRCPT: other@ gets both; SMFIR_DELRCPT: someone@ gets neither.
    other = hato.mailbox("other", "dest.example")
    maildir.wait_for_marker(other, "env-1")
    maildir.wait_for_marker(other, "env-2")
    maildir.wait_for_marker(hato.mailbox("third", "dest.example"), "env-2")
    assert not maildir.find_marker(
        maildir.messages(hato.mailbox("someone", "dest.example")), "env-1"
    )
    assert hato.wait_for_log("event=milter-rcpt-deleted"), hato.log_text()[-2000:]


def test_discard_and_a_reply_code_at_the_end(hato: MilteredHato) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.mail(SENDER)
        smtp.rcpt("someone@dest.example")
        assert smtp.data(_message("discard-1", "DISCARD me"))[0] == 250
        smtp.mail(SENDER)
        smtp.rcpt("someone@dest.example")
        assert smtp.data(_message("reject-1", "REJECT-BODY")) == (
            554,
            b"5.7.1 Body refused by libmilter",
        )
        smtp.mail(SENDER)
        smtp.rcpt("someone@dest.example")
        assert smtp.data(_message("after-1", "plain"))[0] == 250
    box = hato.mailbox("someone", "dest.example")
    maildir.wait_for_marker(box, "after-1")
    every = maildir.all_messages(hato.mailboxes())
    assert not maildir.find_marker(every, "discard-1")
    assert not maildir.find_marker(every, "reject-1")
    assert hato.wait_for_log(r"event=milter .*reply=discard"), hato.log_text()[-2000:]


def test_opendkim_verifying_adds_its_authentication_results(tmp_path: Path) -> None:
    require_peer("opendkim")
    opendkim = OpenDkim(tmp_path / "opendkim")
    opendkim.start()
    server = MilteredHato(tmp_path / "data", [opendkim.address])
    server.start()
    try:
        with smtplib.SMTP(server.host, server.port, timeout=60) as smtp:
            smtp.ehlo("client.sender.example")
            smtp.sendmail(SENDER, ["someone@dest.example"], _message("dkim-1", "hello"))
        box = server.mailbox("someone", "dest.example")
        (found,) = maildir.wait_for_marker(box, "dkim-1")
        head = filtering.head(found.read_bytes())
        # OpenDKIM's SMFIR_INSHEADER at index 0: an unsigned message, dkim=none.
        results = [h for h in head if h.startswith(b"Authentication-Results: opendkim.test;")]
        assert results == [b"Authentication-Results: opendkim.test; dkim=none; dkim-atps=neutral"]
    finally:
        server.stop()
        opendkim.stop()


def test_a_new_sender_and_a_recipient_with_parameters(hato: MilteredHato) -> None:
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.sendmail(SENDER, ["someone@dest.example"], _message("from-1", "CHG-FROM PAR-RCPT"))
    # SMFIR_CHGFROM: the sender queued (and so the Return-Path delivery writes) is the
    # milter's; SMFIR_ADDRCPT_PAR: par@ gets it too (its NOTIFY: the next test).
    for user in ("someone", "par"):
        (found,) = maildir.wait_for_marker(hato.mailbox(user, "dest.example"), "from-1")
        assert filtering.head(found.read_bytes())[0] == b"Return-Path: <bounces@sender.example>"
    assert hato.wait_for_log(r"event=milter-sender-changed .*sender=<bounces@sender.example>")
    log = hato.log_text()
    assert "FOO=1" in log, log[-3000:]  # CHGFROM's parameter we do not take, logged


def test_a_recipient_added_with_parameters_keeps_its_notify_and_orcpt(hato: MilteredHato) -> None:
    """SMFIR_ADDRCPT_PAR "NOTIFY=NEVER ORCPT=rfc822;owner+2Bpar@dest.example": RFC 3461
    §4.1, §4.2 on par@'s queue row (held by the quarantine, so the row is still there to
    read); the recipient the client gave keeps the defaults."""
    earlier = re.findall(r"event=queued id=(\w+) .*held=True", hato.log_text())
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.sendmail(SENDER, ["someone@dest.example"], _message("par-1", "PAR-RCPT QUARANTINE"))
    new = "".join(f"(?!{queue_id}\\b)" for queue_id in earlier)
    held = hato.wait_for_log(rf"event=queued id={new}(\w+) .*held=True")
    assert held, hato.log_text()[-2000:]
    assert hato.wait_for_log(r"event=milter-rcpt-added .*recipient=par@dest.example .*notify=NEVER")
    with sqlite3.connect(f"file:{hato.data_dir / 'queue' / 'queue.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT address, notify, orcpt FROM recipients WHERE queue_id = ?", (held.group(1),)
        ).fetchall()
    assert sorted(rows) == [
        ("par@dest.example", "NEVER", "rfc822;owner+par@dest.example"),
        ("someone@dest.example", None, None),
    ], rows


def test_the_milter_metrics_count_calls_refusals_actions_and_time(hato: MilteredHato) -> None:
    # Run after the tests above (same server): refusals before DATA, answers and every
    # modification at the end of the message, per milter (its address).
    (milter,) = hato.addresses
    with smtplib.SMTP(hato.host, hato.port, timeout=60) as smtp:
        smtp.ehlo("client.sender.example")
        smtp.mail(SENDER)
        assert smtp.rcpt("refused@dest.example")[0] == 550
        assert smtp.rcpt("someone@dest.example")[0] == 250
        assert smtp.data(_message("metrics-1", "CHG-FROM ADD-RCPT"))[0] == 250
    calls = "hato_milter_calls_total"
    # smfi_setreply + SMFIS_REJECT is a reply code of its own (SMFIR_REPLYCODE).
    assert hato.metric(calls, milter=milter, stage="envelope", reply="replycode") >= 2
    assert hato.metric(calls, milter=milter, stage="envelope", reply="tempfail") >= 1
    assert hato.metric(calls, milter=milter, stage="message", reply="accept") >= 4
    assert hato.metric(calls, milter=milter, stage="message", reply="discard") >= 1
    assert hato.metric(calls, milter=milter, stage="message", reply="replycode") >= 1
    actions = "hato_milter_actions_total"
    for action in ("addheader", "insheader", "chgheader", "replbody", "chgfrom", "addrcpt",
                   "delrcpt", "quarantine"):  # fmt: skip
        assert hato.metric(actions, milter=milter, action=action) >= 1, action
    seconds = "hato_milter_seconds_count"
    assert hato.metric(seconds, milter=milter, stage="message") >= 6
    assert hato.metric(seconds, milter=milter, stage="envelope") >= 6
    assert hato.metric("hato_milter_unavailable_total", milter=milter) == 0


def _greeting_and_after(server: MilteredHato) -> tuple[bytes, bytes]:
    """The greeting, then (unless it is a 421: EHLO and QUIT sent) everything until the
    server closes."""
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        if not greeting.startswith(b"421"):
            sock.sendall(b"EHLO client.sender.example\r\nQUIT\r\n")
        return greeting, reader.read()


@pytest.mark.parametrize(
    ("verdict", "greeting", "after"),
    [
        # RFC 5321 §3.1: 554, then 503 to all but QUIT, and 221 to QUIT.
        ("reject", b"554 5.7.1 ", b"503 5.5.1 "),
        # RFC 5321 §3.8: 421 and the connection closed, nothing more read.
        ("tempfail", b"421 4.7.0 ", b""),
    ],
)
def test_a_milter_refusing_the_connection_gets_the_client_a_refusing_greeting(
    tmp_path: Path, libmilter: LibMilter, verdict: str, greeting: bytes, after: bytes
) -> None:
    del libmilter  # only its availability: this test runs one of its own
    milter = LibMilter(tmp_path / "milter", connect=verdict)
    server = MilteredHato(tmp_path / "data", [milter.address])
    server.screened = True  # ready once it greets at all: it refuses everyone
    try:
        milter.start()
        server.start()
        first, rest = _greeting_and_after(server)
        assert first.startswith(greeting), first
        if after:
            assert rest.startswith(after) and b"\r\n221 " in rest, rest
        else:
            assert rest == b"", rest
        assert server.wait_for_log(rf"event=milter-connect-refused .*reply={first[:3].decode()}")
    finally:
        server.stop()
        milter.stop()
