"""A bounce about a non-ASCII recipient names that recipient (issue 14 item 4, RFC 6533): alice
submits an SMTPUTF8 message to jörg.müller@dest.test through Hato A; the next hop, Hato B,
refuses that mailbox (550 5.1.1); the DSN that lands in alice's Maildir is a
message/global-delivery-status with `Final-Recipient: utf-8;jörg.müller@dest.test`, never the
lossy `rfc822;j?rg.m?ller@dest.test` of before."""

from __future__ import annotations

import email
import email.policy
import smtplib
from pathlib import Path

from peers import maildir
from peers.hato import HatoServer
from peers.outbound_hato import SENDER, OutboundConfig, OutboundHato
from peers.server import USER_PASSWORD, DomainSetup, MailSetup
from peers.tls import TestCA

from dnsserver import DnsTestServer

RCPT = "jörg.müller@dest.test"


class NextHop(HatoServer):
    """Hato B, under a host name of its own (the same name would be a mail loop)."""

    def _config_text(self) -> str:
        return super()._config_text().replace('hostname = "hato.test"', 'hostname = "mx.dest.test"')


def _message(marker: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: Jörg Müller <{RCPT}>\r\nSubject: Grüße\r\n"
        f"Message-ID: <{marker}@users.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nHallo Jörg!\r\n"
    ).encode()


def test_bounce_of_an_smtputf8_message_names_the_non_ascii_recipient(
    tmp_path: Path, test_ca: TestCA
) -> None:
    with DnsTestServer({}) as dns:
        b = NextHop(tmp_path / "b", MailSetup(domains=(DomainSetup("dest.test", users=("bob",)),)))
        transport = f'\n[[transport]]\ndomain = "dest.test"\nrelay = "{b.host}:{b.port}"\n'
        a = OutboundHato(tmp_path / "a", test_ca, OutboundConfig(dns.nameserver, extra=transport))
        b.start()
        try:
            a.start()
            try:
                with smtplib.SMTP(a.host, a.submission_port, timeout=20) as smtp:
                    smtp.starttls(context=test_ca.client_context())
                    smtp.login(SENDER, USER_PASSWORD)
                    # RFC 6531 §3.4: SMTPUTF8 on MAIL FROM for the UTF-8 recipient and headers.
                    refused = smtp.sendmail(
                        SENDER, [RCPT], _message("idn-dsn"), mail_options=["SMTPUTF8"]
                    )
                assert refused == {}
                a.wait_event("dsn-queued", to="<alice@users.test>", action="failed")
                data = maildir.wait_for_report(a.mailbox("alice", "users.test"), 20)
            finally:
                a.stop()
        finally:
            b.stop()
    text = data.decode("utf-8")
    assert "j?rg" not in text and "m?ller" not in text, text
    dsn = email.message_from_bytes(data, policy=email.policy.default)
    # RFC 6533 §6.1: the internationalized report type, and its utf-8 address type (§3).
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "global-delivery-status"
    human, status, returned = dsn.iter_parts()
    assert status.get_content_type() == "message/global-delivery-status"
    assert f"Final-Recipient: utf-8;{RCPT}\r\n" in text, text
    assert "Status: 5.1.1" in text and "Action: failed" in text
    assert f"<{RCPT}>: failed" in human.get_content()
    # RFC 6532 §3.7: the returned original is message/global, UTF-8 header and all.
    assert returned.get_content_type() == "message/global"
    assert "Subject: Grüße" in text and "Hallo Jörg!" in text
