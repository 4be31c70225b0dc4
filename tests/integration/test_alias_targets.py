"""An alias target without an account (issue 13 item 6) against the real `hato serve`: the
README's own `sales = ["alice", "bob"]` with only alice added. check-config names bob; mail to
sales reaches alice and bounces for bob (an RFC 3464 DSN in the sender's Maildir), with a log
line; no mailbox is made for bob."""

from __future__ import annotations

import smtplib
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.server import DomainSetup, MailSetup

SETUP = MailSetup(
    domains=(
        DomainSetup(
            "example.test",
            users=("alice", "carol"),
            aliases=(("sales", ("alice", "bob")),),
        ),
    )
)


def test_alias_target_without_account_is_reported_and_bounced(workdir: Path) -> None:
    hato = HatoServer(workdir / "data", SETUP)
    hato.start()
    try:
        checked = hato.hato("check-config")
        assert checked.returncode == 1, checked
        assert "alias sales@example.test: target bob@example.test has no account" in (
            checked.stderr
        )
        assert "hato user add bob@example.test" in checked.stderr
        # Over SMTP (a null sender: the failure is logged, a bounce has nowhere to go).
        message = b"From: mailer@remote.test\r\nSubject: to sales\r\n\r\nquote please\r\n"
        with smtplib.SMTP(hato.host, hato.port, timeout=30) as client:
            assert client.sendmail("<>", ["sales@example.test"], message) == {}
        (to_alice,) = maildir.wait_for_count(hato.mailbox("alice", "example.test"), 1, 15)
        assert to_alice.read_bytes().endswith(message)
        assert hato.wait_for_log(r"event=mailbox-unknown .*to=<bob@example\.test>")
        # Through hato-sendmail from carol: bob's copy comes back to her as an RFC 3464 bounce.
        sent = hato.sendmail(
            ["-f", "carol@example.test", "sales"],
            b"Subject: second\n\nagain\n",
            env_socket=True,
        )
        assert sent.returncode == 0, sent.stderr
        maildir.wait_for_count(hato.mailbox("alice", "example.test"), 2, 15)
        bounces = maildir.wait_for_count(hato.mailbox("carol", "example.test"), 1, 15)
        assert len(bounces) == 1, hato.log_text()
        dsn = bounces[0].read_bytes()
        assert b"report-type=delivery-status" in dsn
        assert b"Final-Recipient: rfc822;bob@example.test" in dsn
        assert b"Status: 5.1.1" in dsn
        assert not hato.mailbox("bob", "example.test").exists()
    finally:
        hato.stop()
