"""Hato to Hato forwarding with ARC (issue 14 item 1): an alias of Hato A forwards to a domain
that Hato B serves; A adds an ARC set (RFC 8617 §5.1), B checks it (§5.2) and records
`arc=pass` in its Authentication-Results. Before the fix, A's seal, folded so that `i=1;`
started a continuation line, made B's ARC check raise inside dkimpy: 421 after DATA, every
retry, so the mail never reached B."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import dkim  # type: ignore[import-untyped]
from peers import maildir
from peers.authcheck import CheckingHato, dkim_keygen
from peers.milters import LibMilter, libmilter_missing
from peers.net import cannot_run
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue, txt_strings


class RelayingHato(CheckingHato):
    """A CheckingHato that relays mail for remote.test to `relay`."""

    def __init__(
        self,
        data_dir: Path,
        setup: MailSetup,
        nameserver: str,
        hostname: str,
        relay: str,
        milter: str | None = None,
    ) -> None:
        super().__init__(data_dir, setup, nameserver, hostname)
        self.relay = relay
        self.milter = milter  # a [[milter]] on the mx role, or None

    def _config_text(self) -> str:
        milter = f'\n[[milter]]\naddress = "{self.milter}"\n' if self.milter else ""
        return (
            super()._config_text()
            + "\n[delivery]\nallow_loopback = true\n"
            + f'\n[[transport]]\ndomain = "remote.test"\nrelay = "{self.relay}"\n'
            + milter
        )


def _message(marker: str, body: str = "hello through two Hatos") -> bytes:
    # The header fields of everyday mail: enough of them that A's h= list is long and the
    # i= tag of its ARC-Message-Signature is folded onto a line of its own.
    return (
        "From: News <news@origin.test>\r\nTo: <fwd@example.org>\r\nCc: <other@origin.test>\r\n"
        "Reply-To: <replies@origin.test>\r\nSubject: forwarded twice\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <{marker}@origin.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\n{body}\r\n"
    ).encode()


def _fields(stored: bytes) -> list[str]:
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    return re.split(r"\r\n(?![ \t])", head)


def _forwarded(
    tmp_path: Path, message: bytes, marker: str, milter: str | None = None
) -> tuple[bytes, str]:
    """`message` sent to A's alias fwd@example.org, which forwards it to B: (what B stored,
    A's DKIM key record)."""
    zone: dict[str, dict[str, list[ZoneValue]]] = {
        "origin.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    }
    with DnsTestServer(zone) as dns:
        b = CheckingHato(
            tmp_path / "b",
            MailSetup(domains=(DomainSetup("remote.test", accept_any=True),)),
            dns.nameserver,
            "mx.remote.test",
        )
        a = RelayingHato(
            tmp_path / "a",
            MailSetup(
                domains=(DomainSetup("example.org", aliases=(("fwd", ("carol@remote.test",)),)),)
            ),
            dns.nameserver,
            "mx.example.org",
            relay=f"{b.host}:{b.port}",
            milter=milter,
        )
        a._prepare()
        key_txt = dkim_keygen(a, "example.org")
        dns.load({**zone, "hato._domainkey.example.org": {"TXT": [txt_strings(key_txt)]}})
        b.start()
        try:
            a.start()
            try:
                with smtplib.SMTP(a.host, a.port, timeout=30) as smtp:
                    smtp.sendmail("news@origin.test", ["fwd@example.org"], message)
                box = b.mailbox("carol", "remote.test")
                found = maildir.wait_for_marker(box, marker)
                assert len(found) == 1, (
                    f"not delivered to B:\n{a.log_text()[-3000:]}\n{b.log_text()[-3000:]}"
                )
                return found[0].read_bytes(), key_txt
            finally:
                a.stop()
        finally:
            b.stop()


def _passes_arc(stored: bytes, key_txt: str) -> list[str]:
    """The stored header fields, once B's verdict and dkimpy's say the chain passes."""
    fields = _fields(stored)
    # RFC 8601 §2.2 / RFC 8617 §10.1: B's verdict on the chain.
    (results,) = [f for f in fields if f.startswith("Authentication-Results: mx.remote.test;")]
    assert re.search(r"\barc=pass\b", results), results
    # And dkimpy itself (what other receivers run) validates A's seal.
    answers = {b"hato._domainkey.example.org.": key_txt.encode()}
    cv, _, reason = dkim.ARC(stored).verify(
        dnsfunc=lambda name, timeout=5: answers.get(name if name.endswith(b".") else name + b".")
    )
    assert cv == dkim.CV_Pass, reason
    return fields


def test_mail_forwarded_by_one_hato_passes_arc_at_the_next(tmp_path: Path) -> None:
    stored, key_txt = _forwarded(tmp_path, _message("arc-2"), "arc-2")
    fields = _passes_arc(stored, key_txt)
    # The case of the bug: a continuation line of A's AMS starts with the i= tag.
    (ams,) = [f for f in fields if f.startswith("ARC-Message-Signature:")]
    assert re.search(r"\r\n[ \t]+i=1;", ams), ams


def test_a_milters_edits_of_forwarded_mail_apply_and_are_sealed(tmp_path: Path) -> None:
    """A's seal is made after its milters (intake/finish.py): a milter on the mx role that
    changes the Subject and replaces the body (SMFIR_CHGHEADER, SMFIR_REPLBODY) has its edits
    forwarded, and the chain still passes at B (RFC 8617 §5.1: changes, then the seal)."""
    missing = libmilter_missing()
    if missing is not None:
        cannot_run(missing)
    milter = LibMilter(tmp_path / "libmilter")
    milter.start()
    try:
        message = _message("arc-milter", "CHANGE-SUBJECT REPLACE-BODY")
        stored, key_txt = _forwarded(tmp_path, message, "arc-milter", milter.address)
    finally:
        milter.stop()
    fields = _passes_arc(stored, key_txt)
    assert "Subject: changed by libmilter" in fields, fields
    assert stored.endswith(b"\r\n\r\nreplaced by libmilter\r\n"), stored[-200:]
