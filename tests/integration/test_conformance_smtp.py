"""Black-box conformance of the real `hato serve` to the SMTP RFCs, over raw sockets (port 25).

One server for the module (the mx listener, with inbound checks and the test DNS server, and a
network that gets the 554 greeting); each case opens its own connection. The tables say, for
each command, the reply code and RFC 3463 enhanced code the RFC asks for (or, where the RFC
leaves a choice, the one Hato made: docs/conformance.md lists both). Every reply after the
greeting is checked for its form (RFC 5321 §4.2) and, but for the EHLO/HELO replies, for an
enhanced status code (RFC 2034 §3, whether or not the client said EHLO: §4).

The STARTTLS, AUTH, submission, trace-field and DSN cases are in test_conformance_submission.py.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.conformance import READ_TIMEOUT, check_form, codes, command
from peers.hato import HatoServer
from peers.net import RawSession
from peers.server import MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer

REFUSED_SOURCE = "127.0.0.2"  # a client of the `refused` network: 554 greeting (RFC 5321 §3.1)
SENDER = "someone@sender.test"
ZONE = {"sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]}}


class ConformanceHato(CheckingHato):
    """The module's server: mx only, inbound checks on (Authentication-Results, RFC 8601), and
    clients from REFUSED_SOURCE refused at connect."""

    def _config_text(self) -> str:
        text = super()._config_text()
        listener = f'address = "{self.host}:{self.port}"\n'
        assert listener in text
        text = text.replace(listener, listener + 'refuse_networks = ["refused"]\n', 1)
        return text + f'\n[[network]]\nname = "refused"\ncidrs = ["{REFUSED_SOURCE}/32"]\n'


@pytest.fixture(scope="module")
def server(test_ca: TestCA) -> Iterator[HatoServer]:
    with DnsTestServer(ZONE) as dns, tempfile.TemporaryDirectory(prefix="hato-conf-") as tmp:
        Path(tmp).chmod(0o755)
        setup = MailSetup(tls=test_ca.tls_files())  # a certificate: STARTTLS on port 25
        hato = ConformanceHato(Path(tmp) / "data", setup, dns.nameserver)
        hato.start()
        try:
            yield hato
        finally:
            hato.stop()


def connect(server: HatoServer, source: str | None = None) -> RawSession:
    session = RawSession(server.host, server.port, timeout=READ_TIMEOUT, source=source)
    code, lines = session.reply()
    assert code == 220, lines  # RFC 5321 §4.3.1: greeting without an enhanced code
    return session


def ehlo(session: RawSession) -> list[bytes]:
    code, lines = command(session, b"EHLO client.test", enhanced=False)
    assert code == 250, lines
    return [line[4:] for line in lines[1:]]


MAIL = b"MAIL FROM:<" + SENDER.encode() + b">"
RCPT = b"RCPT TO:<x@example.org>"
LONG_LOCAL = b"l" * 64  # RFC 5321 §4.5.3.1.1: 64 octets of local part must be accepted
# RFC 3461 §4.2: ORCPT's value is up to 500 characters; the line may be 512 + 500 octets.
ORCPT_500 = b"rfc822;" + b"o" * (500 - len(b"rfc822;@example.org")) + b"@example.org"


def in_transaction(session: RawSession, mail: bytes = b"") -> None:
    """EHLO, MAIL (with `mail` parameters) and one accepted RCPT."""
    ehlo(session)
    assert codes(command(session, MAIL + mail)) == (250, "2.1.0")
    assert codes(command(session, RCPT)) == (250, "2.1.5")


# (id, commands before, the command, expected code, expected enhanced code), after EHLO.
CASES: list[tuple[str, list[bytes], bytes, int, str]] = [
    # RFC 5321 §2.4: verbs and parameter keywords are case-insensitive.
    ("verb-lower-case", [], b"mail from:<" + SENDER.encode() + b">", 250, "2.1.0"),
    ("verb-mixed-case", [], b"MaIl FrOm:<" + SENDER.encode() + b">", 250, "2.1.0"),
    ("param-lower-case", [], MAIL + b" size=100 body=8bitmime", 250, "2.1.0"),
    # Trailing spaces before CRLF are tolerated (RFC 5321 §4.1.1 robustness; Postfix does).
    ("trailing-space", [], MAIL + b"   ", 250, "2.1.0"),
    ("unknown-verb", [], b"FROB", 500, "5.5.1"),  # §4.2.4
    ("noop", [], b"NOOP", 250, "2.0.0"),  # §4.1.1.9
    ("noop-with-string", [], b"NOOP anything at all", 250, "2.0.0"),  # §4.1.1.9
    ("help", [], b"HELP", 214, "2.0.0"),  # §4.1.1.8
    ("help-topic", [], b"HELP MAIL", 214, "2.0.0"),
    ("vrfy-no-argument", [], b"VRFY", 501, "5.5.4"),  # §4.1.1.6: VRFY SP String
    ("vrfy", [], b"VRFY alice", 252, "2.5.0"),  # §3.5.3, §7.3: 252 when not verifying
    ("expn-no-argument", [], b"EXPN", 501, "5.5.4"),  # §4.1.1.7: EXPN SP String
    ("expn", [], b"EXPN staff", 252, "2.5.0"),  # §7.3: a disabled EXPN MUST answer 252
    ("rset-argument", [], b"RSET now", 501, "5.5.4"),  # §4.1.1.5: "RSET" CRLF
    ("quit-argument", [], b"QUIT now", 501, "5.5.4"),  # §4.1.1.10: "QUIT" CRLF
    ("data-argument", [MAIL, RCPT], b"DATA now", 501, "5.5.4"),  # §4.1.1.4: "DATA" CRLF
    ("starttls-argument", [], b"STARTTLS now", 501, "5.5.4"),  # RFC 3207 §4
    ("auth-not-offered", [], b"AUTH PLAIN", 502, "5.5.1"),  # RFC 4954 §4: not on mx
    # §4.1.4 / §4.3.2: sequence errors are 503.
    ("rcpt-before-mail", [], RCPT, 503, "5.5.1"),
    ("data-before-mail", [], b"DATA", 503, "5.5.1"),
    ("data-without-rcpt", [MAIL], b"DATA", 503, "5.5.1"),
    ("mail-in-transaction", [MAIL], MAIL, 503, "5.5.1"),
    ("bdat-before-mail", [], b"BDAT 0 LAST", 503, "5.5.1"),
    # §4.1.1.2 / §3.6.3: the null reverse-path.
    ("null-reverse-path", [], b"MAIL FROM:<>", 250, "2.1.0"),
    ("mail-without-brackets", [], b"MAIL FROM:" + SENDER.encode(), 501, "5.1.7"),
    ("mail-space-before-path", [], b"MAIL FROM: <" + SENDER.encode() + b">", 250, "2.1.0"),
    # §4.5.1: postmaster, with and without domain, of every local domain, in any case.
    ("postmaster-bare", [MAIL], b"RCPT TO:<postmaster>", 250, "2.1.5"),
    ("postmaster-bare-case", [MAIL], b"RCPT TO:<PostMaster>", 250, "2.1.5"),
    ("postmaster-users-test", [MAIL], b"RCPT TO:<POSTMASTER@users.test>", 250, "2.1.5"),
    ("postmaster-example-org", [MAIL], b"RCPT TO:<postmaster@example.org>", 250, "2.1.5"),
    ("postmaster-null-sender", [b"MAIL FROM:<>"], b"RCPT TO:<postmaster>", 250, "2.1.5"),
    # §4.1.1.3 / Appendix C: a source route is accepted and its hops ignored.
    ("source-route", [MAIL], b"RCPT TO:<@a.example,@b.example:x@example.org>", 250, "2.1.5"),
    ("source-route-mail", [], b"MAIL FROM:<@a.example:" + SENDER.encode() + b">", 250, "2.1.0"),
    # §4.1.2 Quoted-string local parts.
    ("quoted-local-part", [MAIL], b'RCPT TO:<"john q. doe"@example.org>', 250, "2.1.5"),
    ("quoted-local-gt", [MAIL], b'RCPT TO:<"a>b"@example.org>', 250, "2.1.5"),
    ("quoted-local-escape", [MAIL], b'RCPT TO:<"a\\"b"@example.org>', 250, "2.1.5"),
    ("local-part-64", [MAIL], b"RCPT TO:<" + LONG_LOCAL + b"@example.org>", 250, "2.1.5"),
    ("unknown-user", [MAIL], b"RCPT TO:<nobody@users.test>", 550, "5.1.1"),
    ("relay-denied", [MAIL], b"RCPT TO:<x@elsewhere.example>", 550, "5.7.1"),
    ("unknown-rcpt-param", [MAIL], RCPT + b" FOO=BAR", 555, "5.5.4"),  # §4.1.1.11
    ("unknown-mail-param", [], MAIL + b" FOO=BAR", 555, "5.5.4"),
    # RFC 1870 §6: SIZE.
    ("size-within", [], MAIL + b" SIZE=1000", 250, "2.1.0"),
    ("size-over", [], MAIL + b" SIZE=2000000", 552, "5.3.4"),
    ("size-not-number", [], MAIL + b" SIZE=big", 501, "5.5.4"),
    # RFC 6152 8BITMIME; RFC 3030 §3 BINARYMIME is not offered.
    ("body-8bitmime", [], MAIL + b" BODY=8BITMIME", 250, "2.1.0"),
    ("body-7bit", [], MAIL + b" BODY=7BIT", 250, "2.1.0"),
    ("body-binarymime", [], MAIL + b" BODY=BINARYMIME", 555, "5.5.4"),
    ("body-bogus", [], MAIL + b" BODY=9BIT", 501, "5.5.4"),
    # RFC 6531 §3.4, §3.5: a UTF-8 address only with the SMTPUTF8 parameter.
    ("utf8-sender-without", [], "MAIL FROM:<jörg@sender.test>".encode(), 553, "5.6.7"),
    ("utf8-sender-with", [], "MAIL FROM:<jörg@sender.test> SMTPUTF8".encode(), 250, "2.1.0"),
    ("utf8-rcpt-without", [MAIL], "RCPT TO:<jörg@example.org>".encode(), 553, "5.6.7"),
    ("smtputf8-value", [], MAIL + b" SMTPUTF8=yes", 501, "5.5.4"),
    # RFC 3461 §4: DSN parameters; a bad value is a syntax error (501).
    ("notify-all", [MAIL], RCPT + b" NOTIFY=SUCCESS,FAILURE,DELAY", 250, "2.1.5"),
    ("notify-never", [MAIL], RCPT + b" NOTIFY=never", 250, "2.1.5"),
    ("notify-never-and-more", [MAIL], RCPT + b" NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
    ("notify-bogus", [MAIL], RCPT + b" NOTIFY=SOMETIMES", 501, "5.5.4"),
    ("notify-repeated", [MAIL], RCPT + b" NOTIFY=DELAY,DELAY", 501, "5.5.4"),
    ("orcpt", [MAIL], RCPT + b" ORCPT=rfc822;x+2By@example.org", 250, "2.1.5"),
    ("orcpt-bad-xtext", [MAIL], RCPT + b" ORCPT=rfc822;x+zz@example.org", 501, "5.5.4"),
    ("orcpt-no-type", [MAIL], RCPT + b" ORCPT=x@example.org", 501, "5.5.4"),
    ("orcpt-too-long", [MAIL], RCPT + b" ORCPT=" + ORCPT_500 + b"o", 501, "5.5.4"),
    ("ret-hdrs", [], MAIL + b" RET=HDRS", 250, "2.1.0"),
    ("ret-bogus", [], MAIL + b" RET=BODY", 501, "5.5.4"),
    ("ret-twice", [], MAIL + b" RET=HDRS RET=FULL", 501, "5.5.4"),
    ("envid", [], MAIL + b" ENVID=abc+2Bdef", 250, "2.1.0"),
    ("envid-bad-xtext", [], MAIL + b" ENVID=abc+2", 501, "5.5.4"),
    ("envid-too-long", [], MAIL + b" ENVID=" + b"e" * 101, 501, "5.5.4"),
    # RFC 4954 §5: AUTH= is a parameter of a server that offers AUTH; mx does not.
    ("auth-param-on-mx", [], MAIL + b" AUTH=<>", 555, "5.5.4"),
    # RFC 8689 §4.1: REQUIRETLS only on a TLS session (not offered here: refused).
    ("requiretls-plain", [], MAIL + b" REQUIRETLS", 530, "5.7.10"),
    # RFC 5321 §4.5.3.1.4: 512 octets a command line, CRLF included; 500 past it.
    ("line-512", [], b"NOOP " + b"x" * (512 - 7), 250, "2.0.0"),
    ("line-513", [], b"NOOP " + b"x" * (513 - 7), 500, "5.5.2"),
    # RFC 3461 §4.2 with §4.5.3.1.4: an extension's parameters lengthen the line.
    (
        "rcpt-line-with-orcpt",
        [MAIL],
        b"RCPT TO:<"
        + LONG_LOCAL
        + b"@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT="
        + ORCPT_500,
        250,
        "2.1.5",
    ),
]


@pytest.mark.parametrize(
    ("before", "line", "code", "enhanced"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_command_reply(
    server: HatoServer, before: list[bytes], line: bytes, code: int, enhanced: str
) -> None:
    with connect(server) as session:
        ehlo(session)
        for earlier in before:
            assert command(session, earlier)[0] == 250, earlier
        assert codes(command(session, line)) == (code, enhanced)


def test_ehlo_is_a_multiline_reply_naming_the_extensions(server: HatoServer) -> None:
    with connect(server) as session:
        keywords = {line.split(b" ")[0] for line in ehlo(session)}
    # RFC 5321 §4.1.1.1; each extension's RFC names its keyword. STARTTLS on plain port 25
    # (RFC 3207); no AUTH there (Hato's choice: mx takes no logins); no REQUIRETLS without
    # TLS (RFC 8689 §4.1).
    assert {b"PIPELINING", b"SIZE", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES"} <= keywords
    assert {b"CHUNKING", b"DSN", b"STARTTLS"} <= keywords
    assert not keywords & {b"AUTH", b"REQUIRETLS", b"BINARYMIME"}


def test_size_keyword_names_the_limit(server: HatoServer) -> None:
    with connect(server) as session:
        sizes = [line for line in ehlo(session) if line.startswith(b"SIZE")]
    assert sizes == [b"SIZE 1048576"]  # RFC 1870 §4: the fixed maximum, in octets


def test_helo_gets_one_line_and_a_transaction(server: HatoServer) -> None:
    with connect(server) as session:
        # RFC 5321 §4.1.1.1: HELO's reply is one line, no extensions (no enhanced code either,
        # RFC 2034 §3).
        code, lines = command(session, b"HELO client.test", enhanced=False)
        assert (code, len(lines)) == (250, 1)
        assert codes(command(session, MAIL)) == (250, "2.1.0")
        assert codes(command(session, RCPT)) == (250, "2.1.5")
        assert command(session, b"DATA")[0] == 354
        # RFC 2034 §4: enhanced codes are sent whether or not the client said EHLO.
        reply = command(session, message_bytes("helo") + b".")
        assert codes(reply)[0] == 250


@pytest.mark.parametrize("argument", [b"HELO", b"EHLO", b"EHLO two words", b"EHLO a..b"])
def test_hello_needs_one_domain_or_literal(server: HatoServer, argument: bytes) -> None:
    with connect(server) as session:
        assert codes(command(session, argument)) == (501, "5.5.4")  # RFC 5321 §4.1.1.1


@pytest.mark.parametrize(
    "literal", [b"[127.0.0.1]", b"[IPv6:::1]", b"[IPv6:2001:db8::1]", b"client.test   "]
)
def test_hello_takes_an_address_literal(server: HatoServer, literal: bytes) -> None:
    with connect(server) as session:
        # §4.1.3 address literals; trailing spaces before CRLF tolerated (as Postfix does).
        assert command(session, b"EHLO " + literal, enhanced=False)[0] == 250


def test_mail_before_hello_is_a_sequence_error(server: HatoServer) -> None:
    with connect(server) as session:
        # RFC 5321 §4.1.4: a session starts with EHLO or HELO; §4.3.2: 503.
        assert codes(command(session, MAIL)) == (503, "5.5.1")
        assert codes(command(session, b"NOOP")) == (250, "2.0.0")  # §4.1.4: any time
        ehlo(session)
        assert codes(command(session, MAIL)) == (250, "2.1.0")


def test_refused_ehlo_leaves_the_transaction_as_it_was(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        # RFC 5321 §4.1.4: after a failed EHLO the server stays in the state it was in.
        assert codes(command(session, b"EHLO")) == (501, "5.5.4")
        assert command(session, b"DATA")[0] == 354
        session.send(message_bytes("after-bad-ehlo") + b".\r\n")
        assert codes(session.reply())[0] == 250


def test_ehlo_and_rset_end_the_transaction(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        # RFC 5321 §4.1.1.5: RSET drops the transaction, keeps the EHLO.
        assert codes(command(session, b"RSET")) == (250, "2.0.0")
        assert codes(command(session, RCPT)) == (503, "5.5.1")
        assert codes(command(session, MAIL)) == (250, "2.1.0")
        # §4.1.4: EHLO again is an implicit RSET.
        ehlo(session)
        assert codes(command(session, RCPT)) == (503, "5.5.1")
        assert codes(command(session, b"RSET")) == (250, "2.0.0")  # RSET with nothing to drop


def message_bytes(marker: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        (
            f"From: <{SENDER}>\r\nTo: <x@example.org>\r\nSubject: conformance {marker}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{marker}@sender.test>\r\n"
        ).encode()
        + maildir.MARKER_HEADER
        + f": {marker}\r\n\r\n".encode()
        + body
    )


def delivered(server: HatoServer, marker: str, user: str = "x") -> bytes:
    box = server.mailbox(user, "example.org")
    found = maildir.wait_for_marker(box, marker, READ_TIMEOUT)
    assert len(found) == 1, found
    return found[0].read_bytes()


def test_pipelined_group_is_answered_in_order(server: HatoServer) -> None:
    with connect(server) as session:
        ehlo(session)
        # RFC 2920 §3.1: the replies come in the order of the commands, one each.
        session.send(
            MAIL + b"\r\n" + RCPT + b"\r\nRCPT TO:<nobody@users.test>\r\n"
            b"RCPT TO:<postmaster@example.org>\r\nDATA\r\n"
        )
        got = [codes(session.reply()) for _ in range(5)]
        assert got == [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (354, "")]
        session.send(message_bytes("pipelined") + b".\r\nNOOP\r\n")
        assert codes(session.reply())[0] == 250
        assert codes(session.reply()) == (250, "2.0.0")
    delivered(server, "pipelined")


def test_data_after_only_refused_recipients_is_554(server: HatoServer) -> None:
    with connect(server) as session:
        ehlo(session)
        session.send(MAIL + b"\r\nRCPT TO:<nobody@users.test>\r\nDATA\r\n")
        got = [codes(session.reply()) for _ in range(3)]
        # RFC 2920 §3.1 (and RFC 5321 §4.1.1.4): no valid recipients, 554.
        assert got == [(250, "2.1.0"), (550, "5.1.1"), (554, "5.5.1")]


def test_one_hundred_recipients_are_taken(server: HatoServer) -> None:
    with connect(server) as session:
        ehlo(session)
        # RFC 5321 §4.5.3.1.8: at least 100 recipients; past the limit 452 (§4.5.3.1.10).
        rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(101))
        session.send(MAIL + b"\r\n" + rcpts)
        got = [codes(session.reply()) for _ in range(102)]
        assert got[:101] == [(250, "2.1.0")] + [(250, "2.1.5")] * 100
        assert got[101] == (452, "4.5.3")


def test_message_over_size_is_552(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        assert command(session, b"DATA")[0] == 354
        body = (b"x" * 998 + b"\r\n") * 1100  # ~1.1 MB, over the 1 MiB limit
        # RFC 1870 §6.3 / RFC 5321 §4.5.3.1.10: 552 at the end of the data.
        assert codes(command(session, message_bytes("big", body) + b".")) == (552, "5.3.4")
        assert codes(command(session, b"NOOP")) == (250, "2.0.0")
        # RFC 3030 §4.2 with RFC 1870: BDAT octets count against the same limit.
        command(session, MAIL)
        command(session, RCPT)
        big = message_bytes("big-bdat", body)
        session.send(b"BDAT %d LAST\r\n" % len(big) + big)
        reply = session.reply()
        check_form(reply)
        assert codes(reply) == (552, "5.3.4")


def test_text_line_over_1000_octets_is_refused(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        command(session, b"DATA")
        body = b"y" * 999 + b"\r\n"  # 1001 octets with its CRLF (RFC 5321 §4.5.3.1.6)
        reply = command(session, message_bytes("long-line", body) + b".")
        # §4.3.2: 554 "transaction failed" at the end of DATA (RFC 3463 X.6.0: content).
        assert codes(reply) == (554, "5.6.0")


def test_line_of_1000_octets_is_taken_and_dot_stuffing_undone(server: HatoServer) -> None:
    body = b"z" * 998 + b"\r\n..leading dot\r\n"
    with connect(server) as session:
        in_transaction(session)
        command(session, b"DATA")
        assert codes(command(session, message_bytes("dots", body) + b"."))[0] == 250
    stored = delivered(server, "dots")
    # RFC 5321 §4.5.2: the leading dot a client doubled is removed.
    assert stored.endswith(b"z" * 998 + b"\r\n.leading dot\r\n")


def test_8bit_body_with_8bitmime_arrives_intact(server: HatoServer) -> None:
    body = "Grüße, ½ — ☃\r\n".encode()
    with connect(server) as session:
        in_transaction(session, b" BODY=8BITMIME")
        command(session, b"DATA")
        assert codes(command(session, message_bytes("8bit", body) + b"."))[0] == 250
    assert delivered(server, "8bit").endswith(body)  # RFC 6152 §3


def test_bdat_chunks_and_bdat_0_last(server: HatoServer) -> None:
    first = message_bytes("bdat")
    with connect(server) as session:
        in_transaction(session)
        # RFC 3030 §2: each chunk is acknowledged; BDAT 0 LAST ends the message.
        session.send(b"BDAT %d\r\n" % len(first) + first)
        assert codes(session.reply()) == (250, "2.0.0")
        session.send(b"BDAT 6\r\nmore\r\n")
        assert codes(session.reply()) == (250, "2.0.0")
        assert codes(command(session, b"BDAT 0 LAST"))[0] == 250
        # A whole message in one BDAT ... LAST, pipelined with its envelope (RFC 3030 §4.2).
        second = message_bytes("bdat-last")
        session.send(MAIL + b"\r\n" + RCPT + b"\r\nBDAT %d LAST\r\n" % len(second) + second)
        assert [codes(session.reply())[0] for _ in range(3)] == [250, 250, 250]
    assert delivered(server, "bdat").endswith(b"Hello.\r\nmore\r\n")
    delivered(server, "bdat-last")


def test_bdat_and_data_do_not_mix(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        session.send(b"BDAT 5\r\nhello")
        assert codes(session.reply()) == (250, "2.0.0")
        # RFC 3030 §2: DATA inside a BDAT transaction is 503; the transaction goes on.
        assert codes(command(session, b"DATA")) == (503, "5.5.1")
        assert codes(command(session, b"RSET")) == (250, "2.0.0")
        assert codes(command(session, MAIL)) == (250, "2.1.0")


def test_554_greeting_serves_only_quit(server: HatoServer) -> None:
    session = RawSession(server.host, server.port, timeout=READ_TIMEOUT, source=REFUSED_SOURCE)
    try:
        reply = session.reply()
        check_form(reply)  # a 554 greeting carries the enhanced code of its refusal
        assert codes(reply) == (554, "5.7.1")
        # RFC 5321 §3.1: after a 554 greeting, 503 to every command but QUIT.
        assert codes(command(session, b"EHLO client.test")) == (503, "5.5.1")
        assert codes(command(session, MAIL)) == (503, "5.5.1")
        assert codes(command(session, b"QUIT")) == (221, "2.0.0")
    finally:
        session.sock.close()


def test_quit_closes_with_221(server: HatoServer) -> None:
    session = connect(server)
    try:
        assert codes(command(session, b"QUIT")) == (221, "2.0.0")  # RFC 5321 §4.1.1.10
        session.sock.settimeout(READ_TIMEOUT)
        assert session.sock.recv(10) == b""
    finally:
        session.sock.close()


def test_received_return_path_and_authentication_results(server: HatoServer) -> None:
    with connect(server) as session:
        in_transaction(session)
        command(session, b"DATA")
        assert codes(command(session, message_bytes("trace") + b"."))[0] == 250
    stored = delivered(server, "trace")
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", head)
    # RFC 5321 §4.4: the final delivery adds Return-Path with the MAIL FROM path, on top.
    assert fields[0] == f"Return-Path: <{SENDER}>"
    received = [f for f in fields if f.startswith("Received:")]
    assert len(received) == 1
    # RFC 5321 §4.4 Time-stamp-line: from (EHLO name and the IP), by, with, id, for; date.
    line = " ".join(received[0].split())
    stamp = re.fullmatch(
        r"Received: from client\.test \(\[127\.0\.0\.1\]\) by hato\.test \(Hato\) "
        r"with ESMTP id (\S+) for <x@example\.org>; (.+)",
        line,
    )
    assert stamp, line
    # RFC 5322 §3.3: date-time; UTC is written "+0000" (the SHOULD of §3.3).
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", stamp[2]), stamp[2]
    # RFC 8601 §2.2: authserv-id, then resinfo; SPF's result with its property (§2.7.2).
    results = [f for f in fields if f.startswith("Authentication-Results:")]
    assert len(results) == 1, fields
    text = " ".join(results[0].split())
    assert text.startswith("Authentication-Results: hato.test;"), text
    assert f"spf=pass smtp.mailfrom={SENDER}" in text, text
    # §5: it sits above the fields the client sent, below our Received.
    assert fields.index(results[0]) < fields.index("Subject: conformance trace")


def test_starttls_on_port_25_resets_the_session(server: HatoServer, test_ca: TestCA) -> None:
    with connect(server) as session:
        ehlo(session)
        command(session, MAIL)
        # Not inside a transaction (Hato's choice, as Postfix's: 503), after RSET it is.
        assert codes(command(session, b"STARTTLS")) == (503, "5.5.1")
        command(session, b"RSET")
        # RFC 3207 §4: 220 to STARTTLS; §4.2: the session starts over, EHLO needed again.
        assert codes(command(session, b"STARTTLS")) == (220, "2.0.0")
        session.start_tls(test_ca.client_context())
        assert codes(command(session, MAIL)) == (503, "5.5.1")
        keywords = {line.split(b" ")[0] for line in ehlo(session)}
        # No STARTTLS on TLS (RFC 3207 §4.2); REQUIRETLS only now (RFC 8689 §4.1); no AUTH.
        assert b"STARTTLS" not in keywords and b"REQUIRETLS" in keywords
        assert b"AUTH" not in keywords
        assert codes(command(session, b"STARTTLS")) == (503, "5.5.1")
        assert codes(command(session, MAIL + b" REQUIRETLS")) == (250, "2.1.0")
        command(session, RCPT)
        command(session, b"DATA")
        assert codes(command(session, message_bytes("on-tls") + b"."))[0] == 250
    stored = delivered(server, "on-tls")
    # RFC 3848 §2: ESMTPS, the session was on TLS.
    assert re.search(rb"by hato\.test \(Hato\) with ESMTPS id ", stored), stored[:600]


def test_idle_client_gets_421_and_stop_gets_421(tmp_path: Path) -> None:
    class ShortIdle(HatoServer):
        def _config_text(self) -> str:
            text = super()._config_text()
            assert "[limits]\n" in text
            return text.replace("[limits]\n", "[limits]\nidle_timeout = 3\n", 1)

    hato = ShortIdle(tmp_path / "data")
    hato.start()
    try:
        # RFC 5321 §4.5.3.2.7 / §3.8: a server that times a client out says 421 and closes.
        idle = connect(hato)
        idle.sock.settimeout(READ_TIMEOUT)
        assert codes(idle.reply()) == (421, "4.4.2")
        idle.sock.close()
        # §3.8: a server shutting down answers 421 to the next command and closes.
        waiting = connect(hato)
        ehlo(waiting)
        deadline = time.monotonic() + READ_TIMEOUT
        hato.proc.send_signal(15)  # type: ignore[union-attr]
        waiting.sock.settimeout(max(1.0, deadline - time.monotonic()))
        assert codes(waiting.reply()) == (421, "4.3.2")
        waiting.sock.close()
    finally:
        hato.stop()
