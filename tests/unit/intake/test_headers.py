"""The header section as it streams in (intake/headers.py): whole or refused, judged once."""

import pytest

from hato.intake import headers
from hato.intake.headers import (
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    HeaderCapture,
    HeaderFilter,
    origin_fields,
)
from hato.model import Address

ALICE = Address("alice", "users.test")


def _owns(address: Address) -> bool:
    return address.local.lower().startswith("alice") and address.domain == "users.test"


def _capture(*chunks: bytes) -> HeaderCapture:
    capture = HeaderCapture()
    for chunk in chunks:
        capture.feed(chunk)
    return capture


def test_the_section_is_the_same_whatever_the_chunks() -> None:
    message = b"From: alice@users.test\r\nSubject: x\r\n\r\nbody\r\n\r\nmore\r\n"
    whole = _capture(message).section()
    assert whole == b"From: alice@users.test\r\nSubject: x\r\n"
    for cut in range(1, len(message)):
        assert _capture(message[:cut], message[cut:]).section() == whole
    assert _capture(b"\r\nbody\r\n").section() == b""
    assert _capture(b"Subject: all header\r\n").section() == b"Subject: all header\r\n"


@pytest.mark.parametrize("chunk", [1, 4096, 10**7])
def test_a_section_past_the_limit_is_refused_not_cut(chunk: int) -> None:
    padding = b"X-Pad: " + b"p" * 990 + b"\r\n"
    message = padding * (MAX_HEADER_BYTES // len(padding) + 1) + b"From: bob@users.test\r\n\r\nx"
    capture = _capture(*(message[i : i + chunk] for i in range(0, len(message), chunk)))
    assert capture.too_large
    verdict = capture.judge(None, _owns)  # on every role
    assert verdict.refusal is not None and verdict.refusal.code == 552
    assert verdict.reason == "header-too-large"


def test_a_section_just_within_the_limit_is_judged() -> None:
    head = b"From: alice@users.test\r\n"
    pad = b"X: " + b"p" * (MAX_HEADER_BYTES - len(head) - 5) + b"\r\n"
    capture = _capture(head + pad + b"\r\nbody")
    assert len(capture.section()) == MAX_HEADER_BYTES and not capture.too_large
    verdict = capture.judge(ALICE, _owns)
    assert verdict.refusal is None and verdict.authors == (ALICE,)


@pytest.mark.parametrize("user", [None, ALICE])  # mx and submission
def test_more_fields_than_the_limit_are_refused_before_any_is_split(
    user: Address | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(headers, "split_header_fields", None)  # never reached
    many = b"From: alice@users.test\r\n" + b"X:\r\n" * MAX_HEADER_FIELDS + b"\r\nbody"
    verdict = _capture(many).judge(user, _owns)
    assert verdict.reason == "too-many-header-fields"
    assert verdict.refusal is not None
    assert (verdict.refusal.code, verdict.refusal.enhanced) == (552, "5.6.0")


def test_the_field_limit_counts_fields_not_folded_lines() -> None:
    folded = b"From: alice@users.test\r\nX: a\r\n" + b" b\r\n" * 5000
    fields = b"X:\r\n" * (MAX_HEADER_FIELDS - 2)
    verdict = _capture(folded + fields + b"\r\nbody").judge(ALICE, _owns)
    assert verdict.refusal is None and verdict.authors == (ALICE,)


@pytest.mark.parametrize(
    ("header", "reason", "code"),
    [
        (b"From: alice@users.test\r\n", "", 0),
        (b"From : bob@users.test\r\n", "from-not-owned", 553),
        (b"From: alice@users.test\r\nSender: bob@users.test\r\n", "sender-not-owned", 553),
        (b"resent-from: x@other.test\r\nFrom: alice@users.test\r\n", "resent-from-not-owned", 553),
        (b"From: alice@users.test\r\nFrom: alice@users.test\r\n", "several-from", 550),
        (b"junk\r\nFrom: alice@users.test\r\n", "header-malformed", 554),
        (b"From: undisclosed\r\n", "from-not-owned", 553),
    ],
)
def test_submission_verdicts(header: bytes, reason: str, code: int) -> None:
    verdict = _capture(header + b"\r\nbody").judge(ALICE, _owns)
    assert verdict.reason == reason
    assert (verdict.refusal.code if verdict.refusal else 0) == code


def test_mx_leaves_the_from_fields_to_dmarc() -> None:
    verdict = _capture(b"junk\r\nFrom: a@x.test\r\nFrom: b@y.test\r\n\r\n").judge(None, _owns)
    assert verdict.refusal is None


def test_forged_results_filter_holds_the_section_back_until_it_ends() -> None:
    forged = HeaderFilter("hato.test")
    assert forged.feed(b"Authentication-Results: hato.test.; dmarc=pass\r\nSubj") == b""
    out = forged.feed(b"ect: x\r\n\r\nbody")
    assert out == b"Subject: x\r\n\r\nbody" and forged.removed == 1


def _filtered(message: bytes, step: int, authserv_id: str = "") -> tuple[bytes, HeaderFilter]:
    kept = HeaderFilter(authserv_id)
    out = b"".join(kept.feed(message[at : at + step]) for at in range(0, len(message), step))
    return out + kept.finish(), kept


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_the_fields_no_client_may_give_are_dropped_whatever_the_chunking(step: int) -> None:
    # RFC 5321 §4.4 Return-Path, RFC 5322 §3.6.3 Bcc (§3.6.6 Resent-Bcc), Content-Length:
    # Postfix's message_drop_headers; names in any case, WSP before the colon, folded values.
    message = (
        b"Return-Path: <forged@evil.test>\r\n"
        b"From: <alice@users.test>\r\n"
        b"bcc: <hidden@x.test>,\r\n <other@x.test>\r\n"
        b"CONTENT-LENGTH : 3\r\n"
        b"Resent-Bcc: <r@x.test>\r\n"
        b"Subject: Return-Path: stays in a value\r\n"
        b"\r\n"
        b"Return-Path: <in the body, kept>\r\n"
    )
    out, kept = _filtered(message, step)
    assert out == (
        b"From: <alice@users.test>\r\n"
        b"Subject: Return-Path: stays in a value\r\n"
        b"\r\n"
        b"Return-Path: <in the body, kept>\r\n"
    )
    assert kept.dropped == 4 and kept.removed == 0


def test_a_message_that_is_all_header_is_filtered_too() -> None:
    out, kept = _filtered(b"From: <a@users.test>\r\nReturn-Path: <x@evil.test>", 5)
    assert out == b"From: <a@users.test>\r\n" and kept.dropped == 1


def test_a_message_without_those_fields_passes_byte_for_byte() -> None:
    message = b"From: <a@users.test>\r\nX-Bcc-Note: kept\r\n\r\nbody\r\n"
    out, kept = _filtered(message, 3)
    assert out == message and kept.dropped == 0
    assert _filtered(b"\r\nReturn-Path: <body>\r\n", 2)[0] == b"\r\nReturn-Path: <body>\r\n"


ORIGIN = origin_fields("hato.test", "Thu, 01 Jan 2026 00:00:00 +0000", "t0k3n")


def _through_submission_filter(message: bytes, chunk: int) -> bytes:
    header_filter = HeaderFilter(missing=ORIGIN)
    passed = b"".join(
        header_filter.feed(message[i : i + chunk]) for i in range(0, len(message), chunk)
    )
    return passed + header_filter.finish()


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_a_submitted_message_without_date_and_message_id_gets_them(chunk: int) -> None:
    # RFC 6409 §8.2, §8.3: added at the end of the header section, the body untouched.
    message = b"From: <a@b.example>\r\nSubject: hi\r\n\r\nDate: in the body\r\n"
    assert _through_submission_filter(message, chunk) == (
        b"From: <a@b.example>\r\nSubject: hi\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <t0k3n@hato.test>\r\n"
        b"\r\nDate: in the body\r\n"
    )


def test_fields_the_message_has_are_not_added_again() -> None:
    message = b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: <a@b.example>\r\n\r\nbody\r\n"
    assert _through_submission_filter(message, 5) == (
        b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: <a@b.example>\r\n"
        b"Message-ID: <t0k3n@hato.test>\r\n\r\nbody\r\n"
    )
    both = b"From: <a@b.example>\r\nmessage-id:<x@y>\r\nDate: x\r\n\r\n"
    assert _through_submission_filter(both, 3) == both


def test_a_message_that_is_all_header_gets_them_too() -> None:
    assert _through_submission_filter(b"From: <a@b.example>\r\n", 4) == (
        b"From: <a@b.example>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <t0k3n@hato.test>\r\n"
    )
    no_crlf = b"From: <a@b.example>"
    assert _through_submission_filter(no_crlf, 4) == no_crlf  # left as it is
