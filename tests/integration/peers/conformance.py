"""The reply checks the conformance suites share (test_conformance_smtp.py and
test_conformance_submission.py): the form of every reply and its enhanced status code."""

from __future__ import annotations

import re

from .net import RawSession

Reply = tuple[int, list[bytes]]

READ_TIMEOUT = 30.0  # a reply comes in milliseconds; a loaded CI machine can take seconds

# RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
#                             Reply-code [ SP textstring ] CRLF
_LINE = re.compile(rb"[2-5][0-5][0-9]([ -].*)?")
# RFC 3463 §2: status-code = class "." subject "." detail; class 2, 4 or 5 as the reply's.
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3} ")


def check_form(reply: Reply, *, enhanced: bool = True) -> None:
    """RFC 5321 §4.2.1: one code on every line, "-" on all but the last; RFC 2034 §3: a 2xx,
    4xx or 5xx reply other than to EHLO/HELO (and the greeting) carries an enhanced code of
    its own class."""
    code, lines = reply
    for i, line in enumerate(lines):
        assert _LINE.fullmatch(line), line
        assert int(line[:3]) == code, lines
        assert line[3:4] == (b" " if i == len(lines) - 1 else b"-"), lines
        assert len(line) + 2 <= 512, line  # RFC 5321 §4.5.3.1.5: reply line
    if enhanced and code // 100 != 3:
        for line in lines:
            found = _ENHANCED.match(line[4:])
            assert found and int(found[1]) == code // 100, lines


def command(session: RawSession, line: bytes, *, enhanced: bool = True) -> Reply:
    reply = session.command(line)
    check_form(reply, enhanced=enhanced)
    return reply


def codes(reply: Reply) -> tuple[int, str]:
    code, lines = reply
    return code, lines[-1][4:].split(b" ", 1)[0].decode() if code // 100 != 3 else ""
