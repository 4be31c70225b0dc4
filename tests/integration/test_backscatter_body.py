"""A failure after our 250 returns a stranger's body to nobody (docs/security.md, 2026-12-08
eighth session), against two real `hato serve`: A, whose alias `team` leads to alice and to
`ghost`, an address without an account (`hato check-config` names it, but the server runs);
B, the victim's server, to which A relays third.test.

A stranger on A's port 25 sends to team@ with MAIL FROM a victim at third.test. The copy for
ghost fails at delivery (5.1.1), and the bounce goes to the victim: it returned the whole
message, a body of the stranger's choosing delivered by our server to a third party. Now a
bounce to a sender that neither authenticated nor passed SPF returns the header section only
(as a bounce of forwarded mail did already).
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

SPAM = b"Buy cheap pills at https://shop.example today!\r\n"


class RelayingHato(HatoServer):
    """A, which sends third.test to B's port."""

    peer_port = 0

    def _config_text(self) -> str:
        return super()._config_text() + (
            f'\n[[transport]]\ndomain = "third.test"\nrelay = "127.0.0.1:{self.peer_port}"\n'
            "\n[delivery]\nallow_loopback = true\n"
        )


class VictimHato(HatoServer):
    """B, another host (its own name: the same one in its greeting would be a loop)."""

    def _config_text(self) -> str:
        return (
            super()._config_text().replace('hostname = "hato.test"', 'hostname = "mx.third.test"')
        )


def test_a_bounce_to_an_unchecked_sender_returns_no_body(workdir: Path) -> None:
    b = VictimHato(workdir / "b", MailSetup(domains=(DomainSetup("third.test", accept_any=True),)))
    a = RelayingHato(
        workdir / "a",
        MailSetup(
            domains=(
                DomainSetup(
                    "example.test", users=("alice",), aliases=(("team", ("alice", "ghost")),)
                ),
            )
        ),
    )
    b.start()
    try:
        a.peer_port = b.port
        a.start()
        try:
            message = b"From: <victim@third.test>\r\nSubject: hello\r\n\r\n" + SPAM
            with smtplib.SMTP(a.host, a.port, timeout=30) as client:
                assert client.sendmail("victim@third.test", ["team@example.test"], message) == {}
            (bounce,) = maildir.wait_for_count(b.mailbox("victim", "third.test"), 1, 60)
            dsn = bounce.read_bytes()
            assert b"Status: 5.1.1" in dsn and b"Final-Recipient: rfc822;ghost@example.test" in dsn
            assert b"Content-Type: text/rfc822-headers" in dsn, dsn.decode()
            assert SPAM not in dsn and b"message/rfc822" not in dsn
            assert a.wait_for_log(r"event=dsn-queued .*returned=headers")
            # alice has it, whole.
            (stored,) = maildir.wait_for_count(a.mailbox("alice", "example.test"), 1, 60)
            assert stored.read_bytes().endswith(SPAM)
        finally:
            a.stop()
    finally:
        b.stop()
