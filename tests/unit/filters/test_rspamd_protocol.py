"""Rspamd's protocol v2 as values: the request headers of an envelope, and a /checkv2 JSON
reply read into a `Scan` (or RspamdUnavailable, never another error)."""

from __future__ import annotations

import pytest

from hato.filters import Envelope, RspamdAction, RspamdUnavailable, parse_scan


def test_the_envelope_travels_in_rspamds_request_headers() -> None:
    envelope = Envelope(
        mail_from="<a@b.example>",
        recipients=("<c@d.example>", "<e@d.example>"),
        client_ip="192.0.2.1",
        helo="mx.b.example",
        user="bob@d.example",
        queue_id="Q1",
    )
    assert envelope.headers() == [
        ("From", "<a@b.example>"),
        ("IP", "192.0.2.1"),
        ("Helo", "mx.b.example"),
        ("Rcpt", "<c@d.example>"),
        ("Rcpt", "<e@d.example>"),
        ("User", "bob@d.example"),
        ("Queue-Id", "Q1"),
    ]


def test_a_reply_with_milter_changes_subject_and_reason() -> None:
    scan = parse_scan(
        {
            "action": "rewrite subject",
            "score": 7.5,
            "required_score": 15,
            "subject": "*** SPAM *** hi",
            "messages": {"smtp_message": "Spam, go away"},
            "symbols": {"B": {}, "A": {}},
            "milter": {
                "add_headers": {
                    "X-Spam": {"value": "Yes", "order": 0},
                    "X-Two": [{"value": "1"}, {"value": "2"}],
                    "X-Plain": "v",
                    "Bad Name": "dropped",
                },
                "remove_headers": {"X-Spam": 0, "Bad:Name": 1},
            },
        }
    )
    assert scan.action is RspamdAction.REWRITE_SUBJECT
    assert (scan.score, scan.required) == (7.5, 15.0)
    assert scan.subject == "*** SPAM *** hi"
    assert scan.smtp_message == "Spam, go away"
    assert scan.symbols == ("A", "B")
    assert scan.add_headers == (("X-Spam", "Yes"), ("X-Two", "1"), ("X-Two", "2"), ("X-Plain", "v"))
    assert scan.remove_headers == ("X-Spam",)


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"action": "destroy"},
        {"action": "reject", "score": "lots"},
        {"action": None},
        {"action": ["reject"]},  # not a name at all (unhashable)
    ],
)
def test_a_reply_that_is_not_rspamds_is_unavailable(reply: dict[str, object]) -> None:
    with pytest.raises(RspamdUnavailable):
        parse_scan(reply)


def test_odd_shapes_of_optional_parts_are_ignored() -> None:
    scan = parse_scan({"action": "no action", "milter": [], "messages": "x", "subject": 3})
    assert scan.action is RspamdAction.NO_ACTION
    assert scan.add_headers == () and scan.subject is None and scan.smtp_message is None
