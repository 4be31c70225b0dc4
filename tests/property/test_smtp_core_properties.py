"""Hypothesis properties of the sans-IO SMTP server core: split-point invariance, and that
arbitrary input only ever produces replies and events, never another exception."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hato.model import Reply
from hato.smtp import (
    BodyChunk,
    CloseConnection,
    ConnectionLost,
    Event,
    MessageAborted,
    StartTLSRequest,
)
from hato.smtp.framing import DataScanner
from kit.smtp_core import Driver

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*")

FRAGMENTS = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<a@b.example> SIZE=50 BODY=8BITMIME\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<x@example.org>\r\n",
    b"RCPT TO:<y@elsewhere.example>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"line of text\r\n",
    b"..stuffed\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY a\r\n",
    b"EXPN a\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b"\n.\n",
    b"\r.\r\n",
    b"\n",
    b"\r",
    b"x" * 700,
    b"y" * 1100 + b"\r\n",
    b"\xff\xfe\r\n",
]

fragments = st.sampled_from(FRAGMENTS) | st.binary(max_size=12)
conversations = st.lists(fragments, max_size=30).map(b"".join)
SETTINGS: dict[str, Any] = {
    "hostname": "mx.example.org",
    "max_message_size": 200,
    "max_recipients": 3,
    "max_command_line": 512,
    "max_text_line": 1000,
    "max_bad_commands": 15,
    "offer_starttls": True,
    "auth_mechanisms": ("PLAIN", "LOGIN"),
    "auth_over_plain": True,
    "dsn": True,
}


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    output: bytes = b""


def refuse_tls(event: Event) -> Reply | None:
    """The kit driver's app, but STARTTLS is refused (a handshake would split the stream)."""
    return Reply(454, "4.7.0", "TLS not available") if isinstance(event, StartTLSRequest) else None


def run(chunks: list[bytes], **overrides: Any) -> Outcome:
    driver = Driver.make(greet=False, decide=refuse_tls, **{**SETTINGS, **overrides})
    driver.conn.greet()
    out = [driver.conn.data_to_send()]
    for chunk in [*chunks, b""]:  # b"" = EOF at the end
        driver.conn.receive_data(chunk)
        driver.pump()
        out.append(driver.conn.data_to_send())
        if driver.closed:
            break
    return Outcome(driver.events, b"".join(out))


def normalized(events: list[Event]) -> list[Event]:
    """Join consecutive BodyChunks (one per read by design) and drop the body of a message
    the core aborted (it stops emitting chunks at a point that depends on the reads)."""
    result: list[Event] = []
    body: list[bytes] = []
    for event in events:
        if isinstance(event, BodyChunk):
            body.append(event.data)
            continue
        if body and not isinstance(event, MessageAborted | ConnectionLost | CloseConnection):
            result.append(BodyChunk(b"".join(body)))
        body = []
        result.append(event)
    return result


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [chunk for chunk in chunks if chunk]


def assert_only_replies(output: bytes) -> None:
    assert output.endswith(b"\r\n") or output == b""
    for line in output.split(b"\r\n")[:-1]:
        assert REPLY_LINE.fullmatch(line), line


@BOUNDED
@given(conversations, st.lists(st.integers(min_value=0), max_size=12))
def test_split_point_invariance(data: bytes, cuts: list[int]) -> None:
    whole = run([data])
    pieces = run(split(data, cuts))
    assert pieces.output == whole.output
    assert normalized(pieces.events) == normalized(whole.events)


@BOUNDED
@given(conversations)
def test_byte_by_byte_equals_one_read(data: bytes) -> None:
    whole = run([data])
    single = run([data[i : i + 1] for i in range(len(data))])
    assert single.output == whole.output
    assert normalized(single.events) == normalized(whole.events)


@BOUNDED
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_only_give_replies_and_events(data: bytes, cuts: list[int]) -> None:
    outcome = run(split(data, cuts))
    assert_only_replies(outcome.output)
    assert isinstance(outcome.events[-1], CloseConnection | ConnectionLost)


@BOUNDED
@given(conversations, st.lists(st.integers(min_value=0), max_size=8), st.booleans())
def test_commands_mixed_with_junk_only_give_replies(
    data: bytes, cuts: list[int], small: bool
) -> None:
    limits = {"max_command_line": 40, "max_text_line": 30, "max_auth_line": 60} if small else {}
    outcome = run(split(data, cuts), **limits)
    assert_only_replies(outcome.output)
    # the conversation always ends: CloseConnection (with its reply) or ConnectionLost
    last = outcome.events[-1]
    assert isinstance(last, CloseConnection | ConnectionLost)
    if isinstance(last, CloseConnection):
        assert outcome.output.endswith(last.reply.to_bytes())


# Lines of many lengths, so that runs near the limit fall at every offset of a block.
body_lines = st.lists(
    st.builds(lambda n, c: c * n + b"\r\n", st.integers(0, 70), st.sampled_from([b"a", b"."])),
    max_size=40,
)


@BOUNDED
@given(body_lines, st.integers(min_value=1, max_value=60), st.integers(0, 5))
def test_the_long_line_shortcut_agrees_with_the_exact_search(
    lines: list[bytes], max_line: int, start: int
) -> None:
    buf = b"\r\n" + b"".join(lines)
    scanner = DataScanner(max_line, 0)
    first_nl = buf.find(b"\n", min(start, len(buf) - 1))
    exact = re.compile(b"\n[^\n]{%d}" % max_line).search(buf, first_nl, len(buf)) is not None
    assert scanner._has_long_line(buf, first_nl, len(buf)) == exact
