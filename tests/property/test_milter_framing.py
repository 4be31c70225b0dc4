"""The milter reply reader: the same replies whatever the chunking (split at every byte), and
only MilterProtocolError ever escapes it on arbitrary input."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from hato.milter.protocol import Event, MilterProtocolError, ReplyReader

_CODES = [b"c", b"a", b"r", b"t", b"d", b"s", b"p", b"q", b"b", b"-", b"+", b"e", b"h"]
_TEXT = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"_"))


@st.composite
def _replies(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([*_CODES, b"y", b"m", b"i", b"O"]))
    if code == b"y":
        data = b"%d 5.7.1 " % draw(st.integers(400, 599)) + draw(_TEXT) + b"\0"
    elif code in (b"m", b"i"):
        data = struct.pack("!I", draw(st.integers(0, 9))) + draw(_TEXT) + b"\0" + draw(_TEXT)
    elif code == b"O":
        data = struct.pack("!III", 6, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**21)))
    elif code in (b"h",):
        data = draw(_TEXT) + b"\0" + draw(_TEXT) + b"\0"
    elif code in (b"e", b"+", b"-"):
        data = draw(_TEXT) + b"\0"
    else:
        data = draw(_TEXT)
    return struct.pack("!I", len(data) + 1) + code + data


def _all(reader: ReplyReader) -> list[Event]:
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


@given(st.lists(_replies(), min_size=1, max_size=6))
def test_split_at_every_byte_gives_the_same_replies(packets: list[bytes]) -> None:
    stream = b"".join(packets)
    whole = ReplyReader()
    whole.receive_data(stream)
    expected = _all(whole)
    assert len(expected) == len(packets)
    for cut in range(len(stream) + 1):
        reader = ReplyReader()
        reader.receive_data(stream[:cut])
        got = _all(reader)
        reader.receive_data(stream[cut:])
        assert got + _all(reader) == expected
    bytewise = ReplyReader()
    got = []
    for i in range(len(stream)):
        bytewise.receive_data(stream[i : i + 1])
        got += _all(bytewise)
    assert got == expected


@given(st.binary(max_size=200))
def test_only_protocol_errors_escape(data: bytes) -> None:
    reader = ReplyReader()
    reader.receive_data(data)
    with contextlib.suppress(MilterProtocolError):
        _all(reader)
