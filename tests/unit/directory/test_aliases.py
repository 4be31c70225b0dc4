"""The aliases file: /etc/aliases format and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hato.directory import AliasFileError, AliasTable
from hato.model import Address

SAMPLE = """\
# Basic system aliases
postmaster:   root
root: alice, Bob@Example.NET,
      carol,
\tdave

"John Doe": john
sales@example.org: "x y"@example.com, erin
Abuse: "abuse-desk"
"""


def test_parse_sample() -> None:
    table = AliasTable.parse(SAMPLE)
    assert table.entries == {
        "postmaster": ("root",),
        "root": ("alice", Address("Bob", "example.net"), "carol", "dave"),
        "john doe": ("john",),
        "sales@example.org": (Address("x y", "example.com"), "erin"),
        "abuse": ("abuse-desk",),
    }
    assert table.origins["root"] == "<aliases>:3"
    assert table.origins["abuse"] == "<aliases>:9"
    assert table.domains() == frozenset({"example.org"})


def test_lookup_domain_key_before_plain_key() -> None:
    table = AliasTable.parse("info: a\ninfo@example.org: b\n")
    assert table.lookup("info", "example.org") == ("b",)
    assert table.lookup("info", "example.net") == ("a",)
    assert table.lookup("nobody", "example.org") is None


def test_load_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("postmaster: root\n", encoding="utf-8")
    table = AliasTable.load(path)
    assert table.entries == {"postmaster": ("root",)}
    assert table.origins["postmaster"] == f"{path}:1"


def test_comment_lines_inside_an_entry_are_skipped() -> None:
    table = AliasTable.parse("root: a,\n# comment\n   # indented comment\n  b\n")
    assert table.entries == {"root": ("a", "b")}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("ok: a\nrun: |/usr/bin/prog", 2, "command is not supported"),
        ('run: "|/usr/bin/prog arg"', 1, "command is not supported"),
        ("log: /var/log/mail", 1, "file is not supported"),
        ("list: :include:/etc/list", 1, ":include: lists are not supported"),
        ("root: \\root", 1, "backslash-escaped targets are not supported"),
        ("a: b\n\nc: d\na: e", 4, "already defined at f:1"),
        ("  b", 1, "continuation line without an alias"),
        ("a:", 1, "has no target"),
        ("a: b,,c", 1, "empty target"),
        ("a b: c", 1, "contains white space"),
        ("nocolon", 1, "expected 'name: target"),
        ("a: b c", 1, "not a valid address"),
        ("a: b@", 1, "not a valid address"),
        ('"unterminated: b', 1, "unterminated quoted alias name"),
        ('a: "b', 1, "unterminated quoted target"),
        ("a@bad..domain: b", 1, "not a valid domain"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(AliasFileError) as info:
        AliasTable.parse(text, source="f")
    message = str(info.value)
    assert message.startswith(f"f:{line}: ")
    assert words in message
