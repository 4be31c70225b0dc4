"""A From with no domain DMARC can judge (RFC 7489 §6.6.1: local policy) under each
`[authcheck] dmarc` enforcement: refused under policy, Junk under quarantine, only the
permerror under report. Nothing is looked up for it."""

from __future__ import annotations

import asyncio

import pytest

from dnsserver import FakeResolver
from hato.intake.inbound import Enforcement, InboundChecker, InboundVerdict
from kit.clock import FakeClock

HEADERS = [
    b"From: =?utf-8?q?ceo=40bank.example?=",  # RFC 2047 §5: readers decode it anyway
    b"Reply-To: ceo@bank.example",  # no From at all
    b"From: " + b", ".join(b"a@d%d.example" % n for n in range(11)),  # too many domains
]


def _verdict(enforcement: Enforcement, header: bytes) -> InboundVerdict:
    checker = InboundChecker(
        FakeResolver({}), authserv_id="mx.test", clock=FakeClock(), enforcement=enforcement
    )
    message = header + b"\r\nSubject: x\r\n\r\nbody\r\n"
    return asyncio.run(
        checker.check(client_ip="192.0.2.1", helo="x.example", mail_from=None, message=message)
    )


@pytest.mark.parametrize("header", HEADERS)
def test_policy_refuses_it(header: bytes) -> None:
    verdict = _verdict(Enforcement.POLICY, header)
    assert b"dmarc=permerror" in verdict.header
    assert verdict.refuse is not None and (verdict.refuse.code, verdict.refuse.enhanced) == (
        550,
        "5.7.1",
    )
    assert "From" in verdict.refuse.text


@pytest.mark.parametrize("header", HEADERS)
def test_quarantine_files_it_as_junk_and_report_only_says_so(header: bytes) -> None:
    quarantined = _verdict(Enforcement.QUARANTINE, header)
    assert quarantined.refuse is None and quarantined.quarantine
    reported = _verdict(Enforcement.REPORT, header)
    assert reported.refuse is None and not reported.quarantine
    assert b"dmarc=permerror" in reported.header
