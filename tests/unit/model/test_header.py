"""The one header field splitter (RFC 5322 §2.2, §3.6.8, §4.5) and what a strict reader refuses."""

import pytest

from hato.model import header
from hato.model.header import field_addresses, malformed_lines, named, split_header_fields


def _names(block: bytes) -> list[bytes]:
    return [field.name for field in split_header_fields(block)]


def test_names_are_the_text_before_the_first_colon_without_white_space() -> None:
    block = (
        b"From : a@x\r\nFrom\t:b@x\r\nTo: c@x\r\n folded\r\nno colon\r\nX-\xc3\xa9: y\r\n"
        b"\r\nbody: z\r\n"
    )
    assert _names(block) == [b"From", b"From", b"To", b"no colon", b"X-\xc3\xa9"]
    fields = split_header_fields(block)
    assert fields[2].raw == b"To: c@x\r\n folded\r\n" and fields[2].text() == " c@x folded"
    assert [f.text() for f in named(fields, b"FROM")] == [" a@x", "b@x"]


def test_a_field_keeps_its_offsets_in_the_block() -> None:
    block = b"A: 1\r\nB: 2\r\n\t3\r\n\r\n"
    a, b = split_header_fields(block)
    assert (a.start, a.end, b.start, b.end) == (0, 6, 6, 16)
    assert block[b.start : b.end] == b.raw


@pytest.mark.parametrize(
    ("block", "bad"),
    [
        (b"From: a@x\r\nTo: b@x\r\n\r\n", []),
        (b"From : a@x\r\nFrom\t: b@x\r\n\r\n", []),  # RFC 5322 §4.5 obs-optional
        (b"Subject: a\r\n  b\r\n\r\n", []),
        (b"no colon here\r\nFrom: b@x\r\n", [1]),
        (b"From: a@x\r\nX-\xc3\xa9: y\r\n", [2]),
        (b"From: a@x\r\nX Y: z\r\n", [2]),
        (b": no name\r\n", [1]),
        (b" leading: continuation\r\nFrom: a@x\r\n", [1]),
        (b"A: 1\r\nbad\r\nB: 2\r\nworse\r\n\r\nbody line\r\n", [2, 4]),
    ],
)
def test_malformed_lines(block: bytes, bad: list[int]) -> None:
    assert malformed_lines(block) == bad


def test_field_addresses_of_every_author() -> None:
    fields = split_header_fields(
        b"From: Team: a@x, B <b@y>;\r\nSender:\r\n\tc@z\r\nFrom: undisclosed\r\n"
    )
    assert field_addresses(named(fields, b"From")) == ["a@x", "b@y", "undisclosed"]
    assert field_addresses(named(fields, b"Sender")) == ["c@z"]
    assert field_addresses([]) == []


def test_a_field_folded_thousands_of_times_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hostile input (RFC 5322 §2.2.3 sets no limit on a field's lines): each continuation
    # line used to copy the field so far into a new HeaderField, quadratic in the field.
    made: list[int] = []
    real = header.HeaderField

    def counting(*args: object) -> header.HeaderField:
        made.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(header, "HeaderField", counting)
    block = b"Subject: " + b"a\r\n " * 20_000 + b"a\r\nTo: b@example.net\r\n"
    fields = header.split_header_fields(block)
    assert [f.name for f in fields] == [b"Subject", b"To"]
    assert fields[0].raw == block[: fields[0].end] and fields[1].start == fields[0].end
    assert len(made) == 2
