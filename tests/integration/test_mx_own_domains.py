"""A stranger on port 25 writing as one of our own users, to our own users (red team,
2026-12-08, docs/operations.md "Red team").

Before, `From: ceo@example.org` from anyone on port 25 was delivered to our users when
example.org published no DMARC record or `p=none` (RFC 7489 §6.6.3 step 5: no record, no
DMARC). Now a From in one of our domains (or our hostname, the From of our DSNs) must pass
aligned SPF or aligned DKIM as if the domain said `p=reject` (`[authcheck] own_domains`),
unless the client is a relay the admin trusts (`own_domains_relays`). Our own users' doors
(hato-sendmail, submission) are not port 25 and are not touched.

Then (branch secfrom, docs/security.md "Sending as someone else, by the other fields"): a From
in a subdomain of ours (`ceo@billing.example.org`), a `Sender:`, `Resent-From:` or
`Resent-Sender:` of ours beside a stranger's From ("ceo on behalf of ..."), and a From whose
display name or comment reads as our address (`"ceo@example.org" <a@stranger.test>`) were
delivered to our users' inboxes. Now the first two must pass SPF or DKIM aligned with our
domain as a From of ours must, and the third goes to the Junk folder; mail that passes
aligned, a subdomain with its own DMARC record, trusted relays and trusted list sealers are
kept as they were.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from peers import maildir
from peers.authcheck import CheckingHato
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue, txt_strings
from hato.authcheck import DkimAlgorithm, generate_key

OUR_KEY, OUR_TXT = generate_key(DkimAlgorithm.RSA_SHA256)
LIST_KEY, LIST_TXT = generate_key(DkimAlgorithm.RSA_SHA256)  # a list whose seal we trust
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    # example.org (ours) publishes no DMARC record; own.test (ours) p=none.
    "_dmarc.own.test": {"TXT": ["v=DMARC1; p=none"]},
    "stranger.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},  # SPF passes, not aligned
    # Our bounce domain: SPF names the test client, aligned (relaxed) with example.org.
    "bounces.example.org": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "s1._domainkey.example.org": {"TXT": [txt_strings(OUR_TXT)]},
    # news.example.org (a subdomain of ours, say a mailing service's) has its own, p=none.
    "_dmarc.news.example.org": {"TXT": ["v=DMARC1; p=none"]},
    "s1._domainkey.lists.example.net": {"TXT": [txt_strings(LIST_TXT)]},
}
REFUSED = (550, b"5.7.1")
RELAY = "127.0.0.2"  # own_domains_relays; the other tests' client is 127.0.0.1


class OwnDomainsHato(CheckingHato):
    def _config_text(self) -> str:
        text = super()._config_text()
        return text.replace(
            "inbound = true",
            f'inbound = true\nown_domains_relays = ["{RELAY}/32"]\n'
            'own_domains_arc_sealers = ["lists.example.net"]',
            1,
        )


@pytest.fixture(scope="module")
def server() -> Iterator[CheckingHato]:
    path = Path(tempfile.mkdtemp(prefix="hato-it-own-"))
    path.chmod(0o755)
    with DnsTestServer(ZONE) as dns:
        setup = MailSetup(
            domains=(
                DomainSetup("example.org", users=("bob", "ceo")),
                DomainSetup("own.test", users=("boss",)),
            )
        )
        hato = OwnDomainsHato(path / "data", setup, dns.nameserver)
        hato.start()
        try:
            yield hato
        finally:
            hato.stop()
            shutil.rmtree(path, ignore_errors=True)


def _message(author: str, marker: str) -> bytes:
    return (
        f"From: <{author}>\r\nTo: <bob@example.org>\r\nSubject: own domains\r\n"
        f"Message-ID: <{marker}@test>\r\n"
        f"{maildir.MARKER_HEADER.decode()}: {marker}\r\n\r\nwire the money\r\n"
    ).encode()


def _send(
    server: CheckingHato, mail_from: str, message: bytes, source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """(code, enhanced status) of the end of DATA, or of MAIL when it is refused."""
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        code, text = smtp.mail(mail_from)
        if code != 250:
            return code, text[:5]
        assert smtp.rcpt("bob@example.org")[0] == 250
        code, text = smtp.data(message)
        return code, text[:5]


def _delivered(server: CheckingHato, marker: str) -> bool:
    return bool(maildir.wait_for_marker(server.mailbox("bob", "example.org"), marker, 30))


def _not_delivered(server: CheckingHato, marker: str) -> bool:
    return maildir.find_marker(maildir.messages(server.mailbox("bob", "example.org")), marker) == []


@pytest.mark.parametrize(
    ("mail_from", "author"),
    [
        ("a@stranger.test", "ceo@example.org"),  # our domain, no DMARC record
        ("a@stranger.test", "boss@own.test"),  # our domain, p=none
        ("a@stranger.test", "CEO@Example.ORG."),  # another spelling of it
        ("", "MAILER-DAEMON@hato.test"),  # a bounce in our hostname's name
        ("", "ceo@example.org"),
    ],
)
def test_a_strangers_from_in_our_domain_is_refused(
    server: CheckingHato, mail_from: str, author: str
) -> None:
    marker = uuid.uuid4().hex
    assert _send(server, mail_from, _message(author, marker)) == REFUSED
    assert server.wait_for_log(r"event=authcheck .*own=fail.* refuse=550")
    assert _not_delivered(server, marker)


def test_aligned_spf_of_our_domain_passes(server: CheckingHato) -> None:
    # RFC 7489 §3.1.2 relaxed: bounces.example.org's SPF pass is aligned with example.org.
    marker = uuid.uuid4().hex
    assert _send(server, "x@bounces.example.org", _message("ceo@example.org", marker))[0] == 250
    assert _delivered(server, marker)


def test_our_own_dkim_signature_passes_through_a_forwarder(server: CheckingHato) -> None:
    # Mail of ours that a forwarder (SRS envelope, its own IP) sends back to us: our
    # DKIM signature survives and is aligned (RFC 7489 §3.1.1).
    marker = uuid.uuid4().hex
    raw = _message("ceo@example.org", marker)
    signed = dkim.sign(raw, b"s1", b"example.org", OUR_KEY, include_headers=[b"from"]) + raw
    assert _send(server, "SRS0=x=y=example.org=ceo@stranger.test", signed)[0] == 250
    assert _delivered(server, marker)
    # The same message with its body changed (a list's footer) no longer passes.
    tampered = signed.replace(b"wire the money", b"wire the money today")
    marker2 = uuid.uuid4().hex
    assert (
        _send(server, "a@stranger.test", tampered.replace(marker.encode(), marker2.encode()))[0]
        == 550
    )


def test_a_trusted_relay_may_use_our_domains(server: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    message = _message("ceo@example.org", marker)
    assert _send(server, "ceo@example.org", message, source=RELAY)[0] == 250
    assert _delivered(server, marker)
    # From anyone else, our domain in MAIL FROM is refused at MAIL already.
    assert _send(server, "ceo@example.org", message) == REFUSED


def test_hato_sendmail_from_our_domain_is_delivered(server: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    done = server.sendmail(
        ["-f", "ceo@example.org", "bob@example.org"], _message("ceo@example.org", marker)
    )
    assert done.returncode == 0, done.stderr
    assert _delivered(server, marker)


def _with(fields: str, marker: str) -> bytes:
    """A message with these From/Sender/Resent- fields."""
    return _message("x", marker).replace(b"From: <x>", fields.encode(), 1)


def _box(server: CheckingHato) -> Path:
    return server.mailbox("bob", "example.org")


def _nowhere(server: CheckingHato, marker: str) -> bool:
    return maildir.find_marker(maildir.all_messages(_box(server)), marker) == []


# ---- 1: a subdomain of ours is held to the domain's rule ---------------------------------


@pytest.mark.parametrize(
    "author", ["ceo@billing.example.org", "ceo@a.b.Example.ORG.", "MAILER-DAEMON@x.example.org"]
)
def test_a_strangers_from_in_a_subdomain_of_ours_is_refused(
    server: CheckingHato, author: str
) -> None:
    # RFC 7489 §6.6.3: no record at _dmarc.billing.example.org, so example.org's decides: ours.
    marker = uuid.uuid4().hex
    assert _send(server, "a@stranger.test", _with(f"From: <{author}>", marker)) == REFUSED
    assert server.wait_for_log(r"event=authcheck .*own=fail.* refuse=550")
    assert _nowhere(server, marker)


def test_subdomain_mail_that_passes_aligned_is_delivered(server: CheckingHato) -> None:
    # Relaxed alignment (RFC 7489 §3.1.2): SPF of bounces.example.org for billing.example.org.
    marker = uuid.uuid4().hex
    message = _with("From: <invoices@billing.example.org>", marker)
    assert _send(server, "x@bounces.example.org", message)[0] == 250
    assert maildir.wait_for_marker(_box(server), marker, 30)
    # So does our own signature, d=example.org, through a forwarder.
    marker = uuid.uuid4().hex
    raw = _with("From: <invoices@billing.example.org>", marker)
    signed = dkim.sign(raw, b"s1", b"example.org", OUR_KEY, include_headers=[b"from"]) + raw
    assert _send(server, "SRS0=x=y=example.org=ceo@stranger.test", signed)[0] == 250
    assert maildir.wait_for_marker(_box(server), marker, 30)


def test_a_subdomain_with_its_own_dmarc_record_is_judged_by_it(server: CheckingHato) -> None:
    marker = uuid.uuid4().hex
    assert (
        _send(server, "a@stranger.test", _with("From: <offers@news.example.org>", marker))[0] == 250
    )
    assert maildir.wait_for_marker(_box(server), marker, 30)


# ---- 2: Sender and Resent-* of ours ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        "From: <a@stranger.test>\r\nSender: <ceo@example.org>",
        "From: <a@stranger.test>\r\nResent-From: The CEO <ceo@example.org>",
        "From: <a@stranger.test>\r\nResent-From: <x@stranger.test>\r\n"
        "Resent-Sender: ceo@example.org",
        "From: <a@stranger.test>\r\nSender: <ceo@billing.example.org>",
        "From: <a@stranger.test>\r\nSender: <a@stranger.test>, <CEO@example.ORG>",
        "From: <a@stranger.test>\r\nsender : <ceo@example.org>",
        # Past what DMARC reads of a From (10 domains): it might name ours.
        "From: <a@stranger.test>\r\nSender: " + ", ".join(f"a@d{n}.test" for n in range(12)),
    ],
)
def test_a_strangers_sender_or_resent_field_of_ours_is_refused(
    server: CheckingHato, fields: str
) -> None:
    marker = uuid.uuid4().hex
    assert _send(server, "a@stranger.test", _with(fields, marker)) == REFUSED
    assert server.wait_for_log(r"event=authcheck .*own_sender=fail.* refuse=550")
    assert _nowhere(server, marker)


def test_sender_fields_that_pass_aligned_or_are_not_ours_are_delivered(
    server: CheckingHato,
) -> None:
    cases = [
        # Aligned SPF for example.org (our bounce domain's).
        ("From: <a@stranger.test>\r\nSender: <ceo@example.org>", "x@bounces.example.org", ""),
        # A trusted relay (own_domains_relays).
        ("From: <a@stranger.test>\r\nResent-From: <ceo@example.org>", "a@stranger.test", RELAY),
        # A stranger's own Sender and Resent fields.
        ("From: <a@stranger.test>\r\nSender: <list@stranger.test>\r\nResent-From: <>", "", ""),
        ("From: <a@stranger.test>\r\nSender: <offers@news.example.org>", "", ""),
    ]
    for fields, mail_from, source in cases:
        marker = uuid.uuid4().hex
        assert _send(server, mail_from, _with(fields, marker), source or "127.0.0.1")[0] == 250, (
            fields
        )
        assert maildir.wait_for_marker(_box(server), marker, 30), fields
    # Our own signature of a message resent by one of ours (Resent-From), forwarded back.
    marker = uuid.uuid4().hex
    raw = _with("From: <a@stranger.test>\r\nResent-From: <ceo@example.org>", marker)
    signed = dkim.sign(
        raw, b"s1", b"example.org", OUR_KEY, include_headers=[b"from", b"resent-from"]
    )
    assert _send(server, "a@stranger.test", signed + raw)[0] == 250
    assert maildir.wait_for_marker(_box(server), marker, 30)


# ---- 2: a display name or comment that reads as our address -------------------------------


@pytest.mark.parametrize(
    "author",
    [
        '"ceo@example.org" <a@stranger.test>',
        "a@stranger.test (ceo@example.org)",
        '"The CEO" <a@stranger.test> (ceo@billing.example.org)',
        "=?utf-8?q?ceo=40example.org?= <a@stranger.test>",
        '"ceo＠ｅxample.org" <a@stranger.test>',
    ],
)
def test_a_display_name_that_reads_as_our_address_goes_to_junk(
    server: CheckingHato, author: str
) -> None:
    marker = uuid.uuid4().hex
    assert _send(server, "a@stranger.test", _with(f"From: {author}", marker))[0] == 250
    assert maildir.wait_for_marker(_box(server) / ".Junk", marker, 30)
    assert maildir.find_marker(maildir.messages(_box(server)), marker) == []
    assert server.wait_for_log(r"event=authcheck .*own_name=fail")


def test_ordinary_and_vouched_display_names_stay_in_the_inbox(server: CheckingHato) -> None:
    for author in [
        '"Alice at example.org" <a@stranger.test>',
        '"a@stranger.test" <a@stranger.test>',
    ]:
        marker = uuid.uuid4().hex
        assert _send(server, "a@stranger.test", _with(f"From: {author}", marker))[0] == 250
        assert maildir.wait_for_marker(_box(server), marker, 30), author
    # A list that rewrote our poster's From for DMARC (Mailman, Google Groups), signed by a
    # sealer we trust (own_domains_arc_sealers): its own DKIM signature vouches for it.
    marker = uuid.uuid4().hex
    raw = _with('From: "ceo@example.org via Staff" <staff@lists.example.net>', marker)
    signed = dkim.sign(raw, b"s1", b"lists.example.net", LIST_KEY, include_headers=[b"from"])
    assert _send(server, "staff-bounces@lists.example.net", signed + raw)[0] == 250
    assert maildir.wait_for_marker(_box(server), marker, 30)
    # From a trusted relay.
    marker = uuid.uuid4().hex
    message = _with('From: "ceo@example.org" <a@stranger.test>', marker)
    assert _send(server, "a@stranger.test", message, source=RELAY)[0] == 250
    assert maildir.wait_for_marker(_box(server), marker, 30)
