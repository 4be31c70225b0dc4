"""LocalBody: a submitted message fed in any chunking gives the same verdicts as the whole
(a bare CR or LF, 8-bit, the header section), and its octets reach the queue's body as sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hato.queue import BodyWriter
from hato.server.localsubmit import LocalBody

# RFC 5322 §2.3: CR and LF only together.
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
SAMPLES = [
    b"Subject: a\r\n\r\nbody\r\n",
    b"Subject: a\r\n\r\nbo\rdy\r\n",
    b"Subject: a\r\n\r\nbo\ndy\r\n",
    b"Subject: a\r\n\r\nbody\r",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"From: x@y\r\nSubject: no body",
]


def _feed(tmp_path: Path, data: bytes, cuts: list[int]) -> LocalBody:
    body = LocalBody(BodyWriter("Q1", str(tmp_path / "Q1")))
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        body.feed(data[start:cut])
        start = max(start, cut)
    body.finish()
    return body


@pytest.mark.parametrize("data", SAMPLES)
def test_every_split_point_gives_the_verdict_of_the_whole(tmp_path: Path, data: bytes) -> None:
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            body = _feed(tmp_path, data, [a, b])
            assert body.bare_eol == bool(BARE.search(data)), (data, a, b)
            assert isinstance(body.writer, BodyWriter)
            assert body.writer.peek_inline() == data
            assert body.size == len(data)
            assert body.header.done


@given(st.binary(max_size=40), st.lists(st.integers(min_value=0, max_value=40), max_size=6))
def test_any_chunking_of_any_octets(data: bytes, cuts: list[int]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        body = _feed(Path(tmp), data, cuts)
    assert body.bare_eol == bool(BARE.search(data))
    assert body.ascii == data.isascii()


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_the_stored_copy_has_no_return_path_content_length_or_bcc(
    tmp_path: Path, step: int
) -> None:
    # RFC 5321 §4.4: hato-sendmail and the maildrop pass the header filter every door has.
    data = (
        b"Return-Path: <forged@evil.test>\r\nFrom: x@y\r\nResent-Bcc: <r@y>\r\n"
        b"Content-Length: 2\r\nBCC: <b@y>\r\n\r\nhi\r\n"
    )
    body = _feed(tmp_path, data, list(range(step, len(data), step)))
    assert isinstance(body.writer, BodyWriter)
    assert body.writer.peek_inline() == b"From: x@y\r\n\r\nhi\r\n"
    assert body.header.section().startswith(b"Return-Path:")  # the checks read what came
    assert body.size == len(data)
