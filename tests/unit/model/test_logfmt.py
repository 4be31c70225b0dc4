"""logfmt's values: safe text as is, anything else quoted, control characters escaped so that a
peer's text cannot forge a log line."""

from __future__ import annotations

import pytest

from hato.model.logfmt import logfmt, logvalue


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a@b.test", "a@b.test"),
        (12, "12"),
        ("no action", '"no action"'),
        ("", '""'),
        ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
        ("evil\r\nevent=forged", '"evil\\x0d\\x0aevent=forged"'),
        ("tab\there \x7f", '"tab\\x09here \\x7f"'),
        ("héllo wörld", '"héllo wörld"'),
    ],
)
def test_a_value_is_written_safe_quoted_or_escaped(value: object, written: str) -> None:
    assert logvalue(value) == written


def test_a_line_leaves_out_none_and_quotes_what_needs_it() -> None:
    line = logfmt("rspamd", id="Q1", action="no action", user=None, score="0.40")
    assert line == 'event=rspamd id=Q1 action="no action" score=0.40'
