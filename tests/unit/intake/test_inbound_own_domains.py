"""[authcheck] own_domains in the inbound checks (policy/ownfrom.py): a From in our own
domains, with no DMARC record, judged as if the domain said p=reject; a DNS temperror of an
aligned check defers; a trusted ARC sealer and a trusted relay are the exceptions."""

from __future__ import annotations

import asyncio
import ipaddress

from dnsserver import FakeResolver
from hato.authcheck.arc import ArcSealer, ArcStatus
from hato.authcheck.dkim import DkimAlgorithm, generate_key, load_signing_key
from hato.intake.inbound import InboundChecker, InboundVerdict
from hato.model.dns import RdType, TxtRecord
from hato.policy import DisplayNameAction, OwnDomainAction, OwnDomains
from kit.clock import FakeClock

CLOCK = FakeClock(1_700_000_000.0, 0.0)
MESSAGE = b"From: ceo@example.org\r\nTo: bob@example.org\r\nSubject: wire\r\n\r\nthe money\r\n"


def _verdict(
    own: OwnDomains,
    resolver: FakeResolver | None = None,
    message: bytes = MESSAGE,
    client_ip: str = "192.0.2.1",
) -> InboundVerdict:
    checker = InboundChecker(
        resolver or FakeResolver({}),
        authserv_id="mx.example.org",
        clock=CLOCK,
        own=own,
        is_own=lambda domain: domain == "example.org",
    )
    return asyncio.run(
        checker.check(client_ip=client_ip, helo="x.example", mail_from=None, message=message)
    )


def test_no_record_is_refused_or_quarantined_as_configured() -> None:
    refused = _verdict(OwnDomains())
    assert refused.refuse is not None and (refused.refuse.code, refused.refuse.enhanced) == (
        550,
        "5.7.1",
    )
    assert "own=fail" in refused.summary
    junk = _verdict(OwnDomains(OwnDomainAction.QUARANTINE))
    assert junk.refuse is None and junk.quarantine
    old = _verdict(OwnDomains(OwnDomainAction.DMARC))
    assert old.refuse is None and not old.quarantine


def test_a_trusted_relay_passes() -> None:
    relays = (ipaddress.ip_network("192.0.2.0/24"),)
    assert _verdict(OwnDomains(relays=relays)).refuse is None
    assert _verdict(OwnDomains(relays=relays), client_ip="198.51.100.1").refuse is not None


def test_an_aligned_dns_failure_defers() -> None:
    resolver = FakeResolver({})
    resolver.tempfail.add("example.org")
    verdict = _verdict(OwnDomains(), resolver, client_ip="192.0.2.1")
    # MAIL FROM <> with HELO x.example: SPF is not aligned; DMARC's own lookup of
    # _dmarc.example.org fails: temperror, so 451, never 550.
    assert verdict.refuse is not None and (verdict.refuse.code, verdict.refuse.enhanced) == (
        451,
        "4.4.3",
    )
    assert "own=temperror" in verdict.summary


def test_a_trusted_arc_sealer_vouches_for_a_list_that_broke_the_signature() -> None:
    pem, record = generate_key(DkimAlgorithm.RSA_SHA256)
    sealer = ArcSealer(
        "lists.example.net", "arc", load_signing_key(pem), "lists.example.net", CLOCK
    )
    resolver = FakeResolver(
        {("arc._domainkey.lists.example.net", RdType.TXT): [TxtRecord((record.encode(),))]}
    )
    head, body = MESSAGE.split(b"\r\n\r\n", 1)
    seal = sealer.seal(head + b"\r\n\r\n", [body], ArcStatus.NONE, results=["spf=pass"])
    assert seal is not None
    sealed = seal + MESSAGE
    trusted = OwnDomains(arc_sealers=frozenset({"lists.example.net"}))
    assert _verdict(trusted, resolver, sealed).refuse is None
    other = OwnDomains(arc_sealers=frozenset({"other.example"}))
    assert _verdict(other, resolver, sealed).refuse is not None


STRANGER = b"From: <a@stranger.test>\r\nTo: bob@example.org\r\nSubject: wire\r\n"


def test_a_sender_of_ours_is_held_as_a_from_of_ours() -> None:
    # RFC 5322 §3.6.2, §3.6.6: readers show "ceo on behalf of a@stranger.test".
    for field in (b"Sender: ceo@example.org", b"Resent-From: <ceo@billing.example.org>"):
        message = STRANGER + field + b"\r\n\r\nx\r\n"
        refused = _verdict(OwnDomains(), message=message)
        assert refused.refuse is not None and refused.refuse.code == 550, field
        assert "own_sender=fail" in refused.summary
        junk = _verdict(OwnDomains(OwnDomainAction.QUARANTINE), message=message)
        assert junk.refuse is None and junk.quarantine
        assert not _verdict(OwnDomains(OwnDomainAction.DMARC), message=message).quarantine
    # A stranger's own Sender is not ours to judge.
    plain = _verdict(OwnDomains(), message=STRANGER + b"Sender: b@stranger.test\r\n\r\nx\r\n")
    assert plain.refuse is None and not plain.quarantine


def test_a_sender_of_ours_whose_dmarc_lookup_fails_defers() -> None:
    resolver = FakeResolver({})
    resolver.tempfail.add("example.org")
    message = STRANGER + b"Sender: ceo@example.org\r\n\r\nx\r\n"
    verdict = _verdict(OwnDomains(), resolver, message)
    assert verdict.refuse is not None and verdict.refuse.code == 451
    assert "own_sender=temperror" in verdict.summary


def test_a_display_name_of_ours_is_quarantined_or_refused_as_configured() -> None:
    message = b'From: "ceo@example.org" <a@stranger.test>\r\nSubject: x\r\n\r\nx\r\n'
    junk = _verdict(OwnDomains(), message=message)
    assert junk.refuse is None and junk.quarantine and "own_name=fail" in junk.summary
    strict = OwnDomains(display_names=DisplayNameAction.REJECT)
    refused = _verdict(strict, message=message)
    assert refused.refuse is not None and refused.refuse.code == 550
    off = _verdict(OwnDomains(display_names=DisplayNameAction.ACCEPT), message=message)
    assert off.refuse is None and not off.quarantine
    # Our address as the author is judged by own_domains, whatever its name says.
    ours = b'From: "bob@example.org" <ceo@example.org>\r\nSubject: x\r\n\r\nx\r\n'
    assert "own_name" not in _verdict(strict, message=ours).summary
