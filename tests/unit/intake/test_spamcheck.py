"""What Hato does with rspamd's verdict: the replies, the fields it adds, the header section
it edits (a spooled body copied into a new one, the body after the header unchanged)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hato.crypto.scratch import SealedScratch
from hato.filters import Envelope, RspamdAction, RspamdClient, Scan
from hato.intake.spamcheck import (
    UNCHECKED,
    OnFailure,
    Response,
    SpamFilter,
    SpamOutcome,
    edit_header,
    field_bytes,
    outcome,
    rewrite,
    rewritten,
    spam_check,
)
from hato.model import Role
from hato.queue.body import BodyWriter

SCAN = Scan(RspamdAction.REJECT, 20.0, 15.0, smtp_message="Spam\r\n from 5.6.7.8 \x01")


def test_reject_is_550_with_rspamds_public_reason_in_printable_ascii() -> None:
    refused = outcome(SCAN, Response.REJECT).refusal
    assert refused is not None
    assert (refused.code, refused.enhanced, refused.text) == (550, "5.7.1", "Spam from 5.6.7.8")


def test_tempfail_is_451_4_7_1_with_a_default_text() -> None:
    refused = outcome(Scan(RspamdAction.GREYLIST, 5.0, 15.0), Response.TEMPFAIL).refusal
    assert refused is not None
    assert (refused.code, refused.enhanced, refused.text) == (451, "4.7.1", "Try again later")


def test_junk_and_subject_keep_rspamds_field_changes() -> None:
    scan = Scan(
        RspamdAction.REWRITE_SUBJECT,
        8.0,
        15.0,
        add_headers=(("X-Spam", "Yes"),),
        remove_headers=("X-Spam",),
        subject="*** SPAM *** hi",
    )
    subject = outcome(scan, Response.SUBJECT)
    assert subject.header == b"X-Spam: Yes\r\n" and subject.remove == ("X-Spam",)
    assert subject.subject == "*** SPAM *** hi" and not subject.junk
    junk = outcome(scan, Response.JUNK)
    assert junk.junk and junk.subject is None
    # Submission: no edits of a message its DKIM signature covers.
    assert outcome(scan, Response.INBOX, edits=False) == SpamOutcome()


def test_rspamds_folded_value_keeps_its_folding_with_crlf() -> None:
    value = "default: False [0.90 / 15.00];\n\tA(0.00)[];\r\n B(0.90)[x]"
    assert field_bytes("X-Spamd-Result", value) == (
        b"X-Spamd-Result: default: False [0.90 / 15.00];\r\n\tA(0.00)[];\r\n B(0.90)[x]\r\n"
    )
    assert field_bytes("X-Fold", "a\nb") == b"X-Fold: a\r\n\tb\r\n"
    assert field_bytes("X-Fold", "a\rb") == b"X-Fold: a\r\n\tb\r\n"  # a bare CR too
    assert field_bytes("X-Rspamd-Action", " no action ") == b"X-Rspamd-Action: no action\r\n"


def test_a_non_ascii_subject_is_an_encoded_word() -> None:
    # RFC 2047: a header field of a message without SMTPUTF8 is ASCII.
    assert field_bytes("Subject", "*** SPAM *** Grüße") == (
        b"Subject: =?utf-8?q?***_SPAM_***_Gr=C3=BC=C3=9Fe?=\r\n"
    )


def test_edit_header_removes_every_field_named_and_replaces_the_subject() -> None:
    section = b"X-Spam: Yes\r\nSubject: one\r\n two\r\nFrom: a@b\r\nx-spam: again\r\n"
    assert edit_header(section, ("X-Spam",), None) == b"Subject: one\r\n two\r\nFrom: a@b\r\n"
    assert edit_header(section, (), "new") == (
        b"Subject: new\r\nX-Spam: Yes\r\nFrom: a@b\r\nx-spam: again\r\n"
    )
    # None of the names there: the section itself, not split into fields and joined again;
    # a name only inside another field's value is not a field of that name.
    clean = b"Subject: about X-Rspamd-Action\r\nFrom: a@b\r\n"
    assert edit_header(clean, ("X-Spam",), None) is clean
    assert edit_header(clean, ("X-Rspamd-Action",), None) == clean


def _writer(tmp_path: Path, name: str, data: bytes) -> BodyWriter:
    writer = BodyWriter(name, str(tmp_path / name))
    for start in range(0, len(data), 1000):
        writer.write(data[start : start + 1000])
    return writer


@pytest.mark.parametrize("size", [10, 300_000])  # inline, and spilled to its file
def test_rewrite_copies_a_spooled_body_with_its_header_edited(tmp_path: Path, size: int) -> None:
    body = b"".join(b"line %07d\r\n" % n for n in range(size // 14 + 1))
    sent = b"X-Spam: forged\r\nSubject: hi\r\n\r\n" + body
    old = _writer(tmp_path, "old", sent)
    new = BodyWriter("new", str(tmp_path / "new"))
    done = rewrite(old, SpamOutcome(remove=("X-Spam",), subject="S"), new)
    assert done is new
    assert b"".join(new.read_back()) == b"Subject: S\r\n\r\n" + body
    assert not (tmp_path / "old").exists()  # the old body is discarded


def test_rewrite_makes_no_copy_when_nothing_is_to_remove(tmp_path: Path) -> None:
    old = _writer(tmp_path, "old", b"Subject: hi\r\n\r\nbody\r\n")
    new = BodyWriter("new", str(tmp_path / "new"))
    assert rewrite(old, SpamOutcome(remove=("X-Spam",)), new) is old


@pytest.mark.parametrize("size", [10, 300_000])  # on the loop, and in a worker thread
def test_rewritten_edits_like_rewrite_and_makes_a_body_only_for_a_change(
    tmp_path: Path, size: int
) -> None:
    body = b"".join(b"line %07d\r\n" % n for n in range(size // 14 + 1))
    made: list[BodyWriter] = []

    def new_body() -> BodyWriter:
        made.append(BodyWriter(f"new{len(made)}", str(tmp_path / f"new{len(made)}")))
        return made[-1]

    old = _writer(tmp_path, "old", b"Subject: hi\r\n\r\n" + body)
    same = asyncio.run(rewritten(old, SpamOutcome(remove=("X-Spam",)), new_body))
    assert same is old
    # In memory: no new body made at all; spilled: one made in vain, discarded, in the thread.
    assert len(made) == (0 if size == 10 else 1)
    old = _writer(tmp_path, "old2", b"X-Spam: forged\r\nSubject: hi\r\n\r\n" + body)
    done = asyncio.run(rewritten(old, SpamOutcome(remove=("X-Spam",), subject="S"), new_body))
    assert done is made[-1]
    assert b"".join(done.read_back()) == b"Subject: S\r\n\r\n" + body


def test_rewrite_keeps_a_keyed_message_in_scratch_even_without_a_header(tmp_path: Path) -> None:
    old = SealedScratch(str(tmp_path))
    old.write(b"\r\nX-Spam: body text\r\n")
    new = SealedScratch(str(tmp_path))
    done = rewrite(old, SpamOutcome(subject="S"), new)
    assert done is new
    assert b"".join(new.chunks()) == b"Subject: S\r\n\r\nX-Spam: body text\r\n"


def _scan_against(tmp_path: Path, reply: bytes, policy: OnFailure) -> tuple[SpamOutcome, bytes]:
    """spam_check of a message in memory against a scripted rspamd on a unix socket that
    answers `reply` and closes; (the outcome, the request the script got)."""
    socket = str(tmp_path / "normal.sock")
    got = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got.extend(head + await reader.readexactly(length))
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def run() -> SpamOutcome:
        server = await asyncio.start_unix_server(serve, socket)
        try:
            spam = SpamFilter(RspamdClient(f"unix:{socket}", timeout=10), on_failure=policy)
            envelope = Envelope("<a@b.example>", ("<c@d.example>",), "192.0.2.1", "b.example")
            body = _writer(tmp_path, "body", b"Subject: hi\r\n\r\nbody\r\n")
            return await spam_check(spam, Role.MX, envelope, b"Received: x\r\n", body)
        finally:
            server.close()

    return asyncio.run(asyncio.wait_for(run(), 30)), bytes(got)


CLEAN = b'{"action": "no action", "score": 0.5, "required_score": 15}'


def test_a_message_in_memory_is_sent_whole_with_our_prefix(tmp_path: Path) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(CLEAN), CLEAN)
    verdict, request = _scan_against(tmp_path, reply, OnFailure.TEMPFAIL)
    assert verdict == SpamOutcome()
    assert request.endswith(b"\r\n\r\nReceived: x\r\nSubject: hi\r\n\r\nbody\r\n")
    assert b"Content-Length: 34\r\n" in request


@pytest.mark.parametrize("policy", list(OnFailure))
@pytest.mark.parametrize(
    "reply",
    [
        # rspamd closes the connection in the middle of its reply
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(CLEAN), CLEAN[:20]),
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
        # a reply larger than we read (post.MAX_REPLY, made small here)
        b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 5000 + CLEAN,
    ],
)
def test_rspamd_closing_mid_way_or_answering_too_much_follows_the_policy(
    tmp_path: Path, reply: bytes, policy: OnFailure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hato.filters.post.MAX_REPLY", 4096)
    verdict, _ = _scan_against(tmp_path, reply, policy)
    if policy is OnFailure.TEMPFAIL:
        assert verdict.refusal == UNCHECKED  # never a 250 for mail that was not checked
    else:
        assert verdict == SpamOutcome()
