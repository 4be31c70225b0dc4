"""RFC 5321 §4.1.2 paths and mailboxes."""

import pytest

from hato.model import Address, AddressError, Reply, format_path, normalize_domain, parse_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<alice@example.org>", Address("alice", "example.org")),
        ("<Alice@EXAMPLE.org>", Address("Alice", "example.org")),
        ("<@relay.example,@b.example:bob@example.org>", Address("bob", "example.org")),
        ('<"john doe"@example.org>', Address("john doe", "example.org")),
        ('<"a\\"b"@example.org>', Address('a"b', "example.org")),
        ("<user@[192.0.2.1]>", Address("user", "[192.0.2.1]")),
        ("<user@[IPv6:2001:DB8::1]>", Address("user", "[IPv6:2001:db8::1]")),
        ("<用户@例子.中国>", Address("用户", "例子.中国")),
    ],
)
def test_valid_paths(text: str, expected: Address) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.org",
        "<alice>",
        "<@example.org>",
        "<a..b@example.org>",
        "<.a@example.org>",
        "<a@-example.org>",
        "<a@exa_mple.org>",
        "<a@[300.1.1.1]>",
        '<"unterminated@example.org>',
        "<" + "a" * 65 + "@example.org>",
        "<a@" + "b" * 64 + ".org>",
        "<a b@example.org>",
        "<@a.example:>",
    ],
)
def test_invalid_paths(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text)


def test_null_path_only_where_allowed() -> None:
    assert parse_path("<>", allow_null=True) is None
    with pytest.raises(AddressError):
        parse_path("<>")
    assert format_path(None) == "<>"


def test_non_ascii_refused_without_utf8() -> None:
    with pytest.raises(AddressError):
        parse_path("<用户@example.org>", utf8=False)


@pytest.mark.parametrize("text", ["a@\udcff", "\udcff@example.org", "a@x\ud800y.org"])
def test_a_lone_surrogate_is_no_address(text: str) -> None:
    """What JSON's "\\udcff" makes (the control socket, a maildrop file): an AddressError,
    not the UnicodeEncodeError that ended the maildrop's pickup."""
    with pytest.raises(AddressError):
        Address.parse(text)
    with pytest.raises(AddressError):
        parse_path(f"<{text}>")


def test_quoting_round_trip() -> None:
    for address in (Address("john doe", "x.org"), Address('a"b', "x.org"), Address("a.b", "x.org")):
        assert parse_path(format_path(address)) == address


def test_idna_domain() -> None:
    assert Address("a", "bücher.de").domain_ascii == "xn--bcher-kva.de"
    assert Address("a", "bücher.de").needs_smtputf8


def test_reply_wire_format() -> None:
    assert Reply(250, "2.0.0", "a\nb").to_bytes() == b"250-2.0.0 a\r\n250 2.0.0 b\r\n"
    assert Reply(220, None, "hi").to_bytes() == b"220 hi\r\n"
    with pytest.raises(ValueError):
        Reply(250, None, "x\r\nMAIL FROM:<a@b>")


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("a@ｅxample.org", "example.org"),  # UTS #46 maps full-width letters
        ("a@EXAMPLE.ORG", "example.org"),
        ("a@example\u3002org", "example.org"),  # ideographic full stop
        ("a@bu\u0308cher.test", "bücher.test"),  # NFD to NFC
        ("a@BÜCHER.test", "bücher.test"),
        ("a@straße.test", "straße.test"),  # non-transitional: ß stays
    ],
)
def test_domains_have_one_normal_form(text: str, domain: str) -> None:
    assert Address.parse(text).domain == domain


@pytest.mark.parametrize("text", ["a@😀.test", "a@a\u0378.test", "a@exa\u200dmple.test"])
def test_domains_without_a_normal_form_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        Address.parse(text)


def test_a_labels_follow_idna2008() -> None:
    assert Address.parse("a@straße.test").domain_ascii == "xn--strae-oqa.test"
    assert normalize_domain("ＢÜCHER.test") == "bücher.test"
