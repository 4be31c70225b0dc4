"""The sans-IO core's fast paths (issue 15: CPU per message) give what the general path gives:
reply bytes made without a Reply, the banner and EHLO replies made once per listener, command
lines looked for within the smaller line limit first, a path's parse cached."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hato.model import AddressError, Reply, parse_path
from hato.smtp import ServerConnection, ServerSettings
from hato.smtp import replies as R
from hato.smtp.commands import Bad, parse_mail, parse_rcpt
from hato.smtp.framing import DataScanner, LineStatus, find_line
from kit.smtp_core import Driver

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORE_REPLIES = [value for value in vars(R).values() if type(value) is Reply]
replies = st.builds(
    Reply,
    st.integers(200, 599),
    st.none() | st.sampled_from(["2.0.0", "5.1.1", "4.7.10"]),
    # Reply texts are our own str: UTF-8 encodable (no lone surrogates).
    st.text(alphabet=st.characters(blacklist_characters="\r", codec="utf-8"), max_size=30),
)


def test_every_core_reply_has_its_own_bytes() -> None:
    assert len(CORE_REPLIES) > 30
    for reply in CORE_REPLIES:
        assert R.wire(reply) == reply.to_bytes()


@given(replies)
def test_wire_of_any_reply_is_its_bytes(reply: Reply) -> None:
    assert R.wire(reply) == reply.to_bytes()
    assert R.wire(reply) == reply.to_bytes()  # cached the second time


def _general(reply: Reply, text: str | None) -> bytes | type[ValueError]:
    try:
        return R.with_text(reply, text).to_bytes()
    except ValueError:
        return ValueError


def _fast(reply: Reply, text: str | None) -> bytes | type[ValueError]:
    try:
        return R.wire_with_text(reply, text)
    except ValueError:
        return ValueError


@BOUNDED
@given(
    st.sampled_from(CORE_REPLIES) | replies,
    st.none() | st.text(max_size=40) | st.sampled_from(["", " ", "Ok ", "a\r", "a\nb", "é"]),
)
def test_reply_with_text_fast_path_matches_reply_to_bytes(reply: Reply, text: str | None) -> None:
    assert _fast(reply, text) == _general(reply, text)


@BOUNDED
@given(
    st.binary(max_size=80).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")),
    st.integers(0, 10),
    st.integers(1, 40),
    st.integers(0, 40),
)
def test_a_smaller_line_limit_decides_unless_too_long(
    buf: bytes, pos: int, short: int, more: int
) -> None:
    """_step_line looks for a line within min(command, AUTH) limit first: any verdict but
    TOO_LONG is the one the line's own (larger) limit gives."""
    pos = min(pos, len(buf))
    small = find_line(buf, pos, short)
    if small is not LineStatus.TOO_LONG:
        assert small == find_line(buf, pos, short + more)


def _hello_general(conn: ServerConnection, ehlo: bool, text: str | None) -> bytes:
    host = conn._settings.hostname
    first = host if text is None else f"{host} {text}"
    lines = [first, *conn.capabilities()] if ehlo else [first]
    return Reply(250, None, "\n".join(lines)).to_bytes()


SETTINGS = [
    {},
    {"offer_starttls": True},
    {"offer_starttls": True, "auth_mechanisms": ("PLAIN",), "dsn": True, "chunking": False},
    {"auth_mechanisms": ("PLAIN", "LOGIN"), "auth_over_plain": True, "smtputf8": False},
]


@pytest.mark.parametrize("options", SETTINGS)
@pytest.mark.parametrize("tls", [False, True])
def test_banner_and_hello_replies_made_once_are_the_general_ones(
    options: dict[str, Any], tls: bool
) -> None:
    settings = ServerSettings(hostname="mx.example.org", **options)
    for _ in range(2):  # the second connection takes them from the cache
        conn = ServerConnection(settings, tls_active=tls)
        conn.greet()
        assert conn.data_to_send() == Reply(220, None, "mx.example.org ESMTP Hato").to_bytes()
        for ehlo in (True, False):
            for text in (None, "hello"):
                assert conn._hello_reply(ehlo, text) == _hello_general(conn, ehlo, text)


def test_the_hello_reply_follows_tls_state_and_settings() -> None:
    """The cache is keyed by listener settings and TLS state: STARTTLS leaves the EHLO reply
    after the handshake; another listener's settings advertise their own."""
    plain = Driver.make(offer_starttls=True)
    assert "STARTTLS" in plain.run("EHLO c.example\r\n")
    assert "STARTTLS" not in plain.run("STARTTLS\r\nEHLO c.example\r\n")
    other = Driver.make(hostname="other.example.net", max_message_size=1234)
    out = other.run("EHLO c.example\r\n")
    assert out.startswith("250-other.example.net\r\n") and "SIZE 1234" in out


def test_auth_line_limit_smaller_than_the_command_limit() -> None:
    """With max_auth_line under max_command_line, an AUTH line between the two is too long,
    any other command that long is read (RFC 4954 §4, RFC 5321 §4.5.3.1.4)."""
    d = Driver.make(
        max_command_line=200, max_auth_line=60, auth_mechanisms=("PLAIN",), auth_over_plain=True
    )
    d.run("EHLO c.example\r\n")
    assert d.run("AUTH PLAIN " + "A" * 80 + "\r\n").startswith("500 5.5.2")
    assert d.run("NOOP " + "x" * 120 + "\r\n").startswith("250 ")
    assert d.run("NOOP " + "x" * 200 + "\r\n").startswith("500 5.5.2")


def test_auth_line_limit_larger_than_the_command_limit() -> None:
    d = Driver.make(
        max_command_line=60, max_auth_line=200, auth_mechanisms=("PLAIN",), auth_over_plain=True
    )
    d.run("EHLO c.example\r\n")
    assert d.run("NOOP " + "x" * 80 + "\r\n").startswith("500 5.5.2")
    assert d.run("auth plain " + "A" * 80 + "\r\n").startswith("535 ")  # read: no such user
    assert d.run("AUTH PLAIN " + "A" * 200 + "\r\n").startswith("500 5.5.2")


PATHS = ["<a@b.example>", "<>", "<@r.example:a@b.example>", '<"x y"@b.example>', "<bad>", "<a@>"]


@pytest.mark.parametrize("path", PATHS)
def test_a_cached_path_parse_is_the_parse(path: str) -> None:
    settings = ServerSettings(hostname="mx.example.org")
    for _ in range(2):  # the second time from the cache; a refusal is refused again
        try:
            expected = parse_path(path, utf8=True, allow_null=True)
        except AddressError:
            assert isinstance(parse_mail(f"FROM:{path}", settings, auth_offered=False), Bad)
            assert isinstance(parse_rcpt(f"TO:{path}", settings, smtputf8=False), Bad)
            continue
        mail = parse_mail(f"FROM:{path}", settings, auth_offered=False)
        assert not isinstance(mail, Bad) and mail.path == expected
        rcpt = parse_rcpt(f"TO:{path}", settings, smtputf8=False)
        if expected is None:
            assert isinstance(rcpt, Bad)  # RFC 5321 §4.1.1.3: no null forward-path
        else:
            assert not isinstance(rcpt, Bad) and rcpt.address == expected


@BOUNDED
@given(
    st.lists(st.sampled_from([b"\n", b"a", b"aaaaaaa", b"\r\n"]), max_size=60).map(b"".join),
    st.integers(1, 12),
    st.integers(0, 20),
    st.integers(0, 20),
)
def test_the_long_line_walk_is_the_regex(body: bytes, max_line: int, start: int, cut: int) -> None:
    """_has_long_line's rfind walk finds what b"\\n[^\\n]{max_line}" finds, at any region."""
    buf = b"\r\n" + body
    first_nl = buf.find(b"\n", min(start, len(buf) - 1))
    first_nl = 1 if first_nl < 0 else first_nl  # the scan starts at an LF
    stop = max(first_nl, len(buf) - cut)
    exact = re.compile(b"\n[^\n]{%d}" % max_line).search(buf, first_nl, stop) is not None
    assert DataScanner(max_line, 0)._has_long_line(buf, first_nl, stop) == exact


def test_a_read_ending_with_bdat_0_last_still_ends_the_message() -> None:
    """A read that ends with its last line leaves nothing to parse, except a BDAT chunk of 0
    octets, which ends without further input (RFC 3030 §2)."""
    d = Driver.make()
    d.run("EHLO c.example\r\n")
    d.run("MAIL FROM:<a@b.example>\r\n")
    d.run("RCPT TO:<x@example.org>\r\n")
    assert d.run("BDAT 0 LAST\r\n") == "250 2.0.0 Ok\r\n"
    d.run("MAIL FROM:<a@b.example>\r\n")
    d.run("RCPT TO:<x@example.org>\r\n")
    assert d.run("BDAT 3\r\n") == ""
    assert d.run("abc") == "250 2.0.0 3 octets received\r\n"
    assert d.run("BDAT 0 LAST\r\n") == "250 2.0.0 Ok\r\n"


@BOUNDED
@given(
    st.lists(
        st.sampled_from([b"\r\n", b".", b"..", b"a", b"abc", b"\r\n.\r\n", b"\r", b"\n"]),
        max_size=40,
    ).map(b"".join),
    st.integers(0, 30),
)
def test_one_search_for_dotted_lines_scans_as_before(body: bytes, start: int) -> None:
    """scan's one search for CRLF "." (the end marker, or a stuffed line) gives what the
    search for the end marker and the unstuffing of every region gave, at any start."""
    buf = b"\r\n" + body
    pos = 2 + min(start, len(body))
    resume, chunk, ended, bare = DataScanner(0, 0).scan(buf, pos)
    if bare:  # refused: nothing handed on (the bare CR/LF counts are not changed here)
        assert (resume, chunk, ended) == (pos, None, False)
        return
    end = buf.find(b"\r\n.\r\n", pos - 2)  # RFC 5321 §4.1.1.4: the end marker alone
    assert ended == (end >= 0) and (not ended or resume == end + 5)
    stop = resume - 3 if ended else resume  # the region scanned: its CRLF before the dot
    if resume > pos:
        # RFC 5321 §4.5.2: every region unstuffed by replace, as before.
        assert chunk == (buf[pos - 2 : stop].replace(b"\r\n.", b"\r\n")[2:] or None)
    else:
        assert chunk is None
