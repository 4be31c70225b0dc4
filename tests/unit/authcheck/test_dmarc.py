"""DMARC (RFC 7489, RFC 9091) on a fake resolver: records, the From domain, alignment, policy
choice (p, sp, np), pct sampling; each case with the action a receiver would take."""

from __future__ import annotations

import asyncio
import email.parser
from collections.abc import Sequence
from pathlib import Path

import pytest

import hato.authcheck.dmarc as dmarc_module
from dnsserver import FakeResolver, FakeValue
from hato.authcheck.dmarc import (
    Alignment,
    DkimOutcome,
    DmarcPolicy,
    DmarcRecord,
    DmarcRecordError,
    DmarcResult,
    DmarcStatus,
    FromProblem,
    SpfOutcome,
    aligned,
    evaluate,
    from_domains,
    organizational_domain,
    parse_record,
    strictest,
)
from hato.authcheck.spf import SpfResult, SpfResultCode
from hato.model.dns import DnsStatus, RdType

SAMPLES = Path("/work/shared/vectors/dmarc")
if not SAMPLES.exists():
    SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "vectors" / "dmarc"


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


ZONE: dict[tuple[str, RdType], FakeValue] = {
    ("_dmarc.example.com", RdType.TXT): ["v=DMARC1; p=reject; rua=mailto:d@example.com"],
    ("_dmarc.strict.example", RdType.TXT): ["v=DMARC1; p=reject; adkim=s; aspf=s"],
    ("_dmarc.example.net", RdType.TXT): ["v=DMARC1; p=reject; sp=quarantine; np=reject"],
    ("sub.example.net", RdType.A): ["192.0.2.1"],
    ("_dmarc.example.org", RdType.TXT): ["v=DMARC1; p=quarantine; pct=25"],
    ("_dmarc.two.example", RdType.TXT): ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    ("_dmarc.bad.example", RdType.TXT): ["v=DMARC1; p=maybe"],
    ("_dmarc.example.edu", RdType.TXT): ["spf-like text", "v=DMARC1;p=none"],
}

SPF_PASS = SpfOutcome("example.com", "pass")


def _evaluate(
    author: str,
    spf: SpfOutcome | None,
    dkim: Sequence[DkimOutcome] = (),
    *,
    rng: float = 0.0,
    resolver: FakeResolver | None = None,
) -> DmarcResult:
    resolver = resolver or FakeResolver(ZONE)
    return asyncio.run(evaluate(author, spf, dkim, resolver=resolver, rng=FixedRng(rng)))


# -- records ----------------------------------------------------------------------------------


def test_parse_full_record() -> None:
    record = parse_record(
        "v=DMARC1; p=Quarantine; sp=reject; np=none; pct=50; adkim=s; aspf=r; "
        "rua=mailto:a@example.com, mailto:b@example.com!10m; ruf=mailto:f@example.com; "
        "fo=1:d; ri=3600; x-unknown=1"
    )
    assert record == DmarcRecord(
        policy=DmarcPolicy.QUARANTINE,
        subdomain_policy=DmarcPolicy.REJECT,
        nonexistent_policy=DmarcPolicy.NONE,
        pct=50,
        adkim=Alignment.STRICT,
        aspf=Alignment.RELAXED,
        rua=("mailto:a@example.com", "mailto:b@example.com!10m"),
        ruf=("mailto:f@example.com",),
        fo=("1", "d"),
    )


def test_parse_defaults() -> None:
    assert parse_record("v=DMARC1; p=none") == DmarcRecord(DmarcPolicy.NONE)


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC1",
        "v=DMARC1; p=maybe",
        "v=DMARC2; p=none",
        "p=none; v=DMARC1",
        "v=DMARC1; p=none; pct=101",
        # A stranger's record: digits int() refuses were a ValueError, the session's 421.
        "v=DMARC1; p=reject; pct=\u00b2",
        "v=DMARC1; p=reject; pct=" + "1" * 5000,
    ],
)
def test_invalid_records(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


def test_pct_with_leading_zeros_is_read() -> None:
    assert parse_record("v=DMARC1; p=reject; pct=" + "0" * 5000 + "25").pct == 25


def test_invalid_p_with_a_rua_acts_as_p_none() -> None:
    # RFC 7489 §6.6.3: a bad p, but a valid rua: act as p=none (so reports still flow).
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:r@example.com").policy is DmarcPolicy.NONE


# -- the From domain --------------------------------------------------------------------------


def _sample_headers(name: str) -> list[tuple[str, str]]:
    message = email.parser.BytesHeaderParser().parsebytes((SAMPLES / name).read_bytes())
    return [(key, str(value)) for key, value in message.items()]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("test.message", ("example.com",)),
        ("testcomma.message", ("example.com",)),
        ("test.message_sub", ("sub.example.net",)),
        ("test.message_multi", ("example.org", "example.com")),  # in order of appearance
        ("test.message_multi2", ("example.com", "example.org")),
        ("test.nofrom.message", FromProblem.NO_ADDRESS),
    ],
)
def test_from_domains_of_sample_messages(
    sample: str, expected: tuple[str, ...] | FromProblem
) -> None:
    assert from_domains(_sample_headers(sample)) == expected


def test_from_domains_problems_and_forms() -> None:
    assert from_domains([("To", "a@example.com")]) is FromProblem.NO_FROM
    # RFC 7489 §6.6.1: every domain of every From field is an Author Domain.
    two = [("From", "a@example.com"), ("FROM ", "b@example.net")]
    assert from_domains(two) == ("example.com", "example.net")
    same = [("From", "A <a@Example.COM>, B <b@example.com.>")]
    assert from_domains(same) == ("example.com",)
    assert from_domains([("From", "x@[192.0.2.1]")]) is FromProblem.BAD_DOMAIN
    # A bad domain beside a good one cannot make the message a permerror.
    assert from_domains([("From", "x@[192.0.2.1], y@bank.example")]) == ("bank.example",)
    assert from_domains([("From", "Hato <hato@例え.jp>")]) == ("xn--r8jz45g.jp",)
    assert from_domains([("From", "ceo@ｂank.example")]) == ("bank.example",)  # UTS #46


def test_a_senders_from_is_read_once_and_a_long_one_is_not_kept() -> None:
    # The domains are a function of the From fields' text: kept by it, up to 1 KiB of it.
    kept = dmarc_module._author_domains
    kept.cache_clear()
    for _ in range(3):
        assert from_domains([("From", "Bench <bench@sender.example>")]) == ("sender.example",)
    assert (kept.cache_info().misses, kept.cache_info().hits) == (1, 2)
    long = ", ".join(f"user{n} {'x' * 200} <u{n}@d{n}.example>" for n in range(10))
    assert from_domains([("From", long)]) == tuple(f"d{n}.example" for n in range(10))
    assert kept.cache_info().currsize == 1


def test_a_from_naming_too_many_domains_or_too_long_is_not_parsed() -> None:
    # RFC 7489 §6.6.1: each domain a policy look-up; more than MAX_AUTHOR_DOMAINS is refused.
    many = ", ".join(f"a@d{n}.example" for n in range(dmarc_module.MAX_AUTHOR_DOMAINS + 1))
    assert from_domains([("From", many)]) is FromProblem.TOO_MANY
    # Past MAX_FROM_SIZE the field is not parsed at all (seconds of the event loop).
    groups = "g:a@b;" * (dmarc_module.MAX_FROM_SIZE // 6 + 1)
    assert from_domains([("From", groups)]) is FromProblem.TOO_LONG
    two = [("From", "a@b.example"), ("From", " " * dmarc_module.MAX_FROM_SIZE)]
    assert from_domains(two) is FromProblem.TOO_LONG
    # Nested past the parser's depth: no domain to judge, not a RecursionError.
    assert from_domains([("From", "(" * 600 + "a@b.example")]) is FromProblem.UNREADABLE


def _result(status: DmarcStatus, disposition: DmarcPolicy, domain: str) -> DmarcResult:
    return DmarcResult(status, disposition, domain)


def test_strictest_of_several_author_domains() -> None:
    passed = _result(DmarcStatus.PASS, DmarcPolicy.NONE, "a.example")
    quarantine = _result(DmarcStatus.FAIL, DmarcPolicy.QUARANTINE, "q.example")
    reject = _result(DmarcStatus.FAIL, DmarcPolicy.REJECT, "r.example")
    deferred = _result(DmarcStatus.TEMPERROR, DmarcPolicy.REJECT, "t.example")
    assert strictest([passed]) is passed
    assert strictest([passed, quarantine]) is quarantine
    assert strictest([quarantine, passed, reject]) is reject
    assert strictest([quarantine, deferred]) is deferred
    assert strictest([deferred, reject]) is reject


# -- alignment and policy ---------------------------------------------------------------------


def test_alignment_compares_u_labels_and_a_labels_as_one_name() -> None:
    # The SPF domain comes from MAIL FROM in U-labels, the author domain in A-labels.
    assert aligned("Bücher.example", "xn--bcher-kva.example", Alignment.STRICT)
    assert aligned("mail.bücher.example", "xn--bcher-kva.example", Alignment.RELAXED)
    assert not aligned("bucher.example", "xn--bcher-kva.example", Alignment.RELAXED)


def test_organizational_domain() -> None:
    assert organizational_domain("a.b.example.co.jp") == "example.co.jp"
    assert organizational_domain("Mail.Example.COM.") == "example.com"
    assert organizational_domain("co.jp") == "co.jp"


def test_aligned_pass_with_spf_and_dkim() -> None:
    result = _evaluate("example.com", SPF_PASS, [DkimOutcome("example.com", "pass")])
    assert (result.status, result.disposition) == (DmarcStatus.PASS, DmarcPolicy.NONE)
    assert (result.spf_aligned, result.dkim_aligned) == (True, True)
    assert result.policy is DmarcPolicy.REJECT
    assert result.record is not None and result.record.rua == ("mailto:d@example.com",)


def test_spf_only_pass_relaxed() -> None:
    # RFC 7489 §3.1.2: relaxed SPF alignment: bounces.example.com aligns with example.com.
    spf = SpfOutcome.of(SpfResult(SpfResultCode.PASS, "bounces.example.com"))
    result = _evaluate("example.com", spf, [DkimOutcome("example.com", "fail")])
    assert (result.status, result.spf_aligned, result.dkim_aligned) == (
        DmarcStatus.PASS,
        True,
        False,
    )


def test_dkim_only_pass() -> None:
    spf = SpfOutcome("mailer.example", "pass")  # passes, but not aligned
    result = _evaluate("example.com", spf, [DkimOutcome("mail.example.com", "pass")])
    assert (result.status, result.spf_aligned, result.dkim_aligned) == (
        DmarcStatus.PASS,
        False,
        True,
    )


def test_fail_rejects_when_nothing_aligned_passes() -> None:
    spf = SpfOutcome("example.com", "softfail")
    dkim = [DkimOutcome("example.com", "fail"), DkimOutcome("other.example", "pass")]
    result = _evaluate("example.com", spf, dkim)
    assert (result.status, result.disposition) == (DmarcStatus.FAIL, DmarcPolicy.REJECT)


def test_strict_alignment_needs_the_exact_domain() -> None:
    sub_spf = SpfOutcome("bounce.strict.example", "pass")
    sub_dkim = [DkimOutcome("mail.strict.example", "pass")]
    failed = _evaluate("strict.example", sub_spf, sub_dkim)
    assert (failed.status, failed.disposition) == (DmarcStatus.FAIL, DmarcPolicy.REJECT)
    exact = _evaluate("strict.example", None, [DkimOutcome("STRICT.example", "pass")])
    assert (exact.status, exact.dkim_aligned) == (DmarcStatus.PASS, True)


def test_subdomain_policy_from_the_organizational_domain() -> None:
    # RFC 7489 §6.6.3: no _dmarc.sub.example.net, so the org record applies, with its sp.
    resolver = FakeResolver(ZONE)
    result = _evaluate("sub.example.net", None, resolver=resolver)
    assert (result.status, result.policy_domain) == (DmarcStatus.FAIL, "example.net")
    assert result.disposition is DmarcPolicy.QUARANTINE
    assert ("_dmarc.sub.example.net", RdType.TXT) in resolver.asked


def test_np_for_a_non_existent_subdomain() -> None:
    # RFC 9091 §4.1: ghost.example.net has no A, AAAA or MX: np=reject applies, not sp.
    result = _evaluate("ghost.example.net", None)
    assert (result.policy, result.disposition) == (DmarcPolicy.REJECT, DmarcPolicy.REJECT)


def test_np_is_not_applied_when_existence_is_unknown() -> None:
    unknown = {("ghost.example.net", t): DnsStatus.TEMPFAIL for t in (RdType.A, RdType.MX)}
    resolver = FakeResolver({**ZONE, **unknown})
    result = _evaluate("ghost.example.net", None, resolver=resolver)
    assert result.disposition is DmarcPolicy.QUARANTINE


def test_org_domain_itself_uses_p() -> None:
    assert _evaluate("example.net", None).disposition is DmarcPolicy.REJECT


def test_missing_record_is_none_and_no_action() -> None:
    result = _evaluate("nodmarc.example", SpfOutcome("nodmarc.example", "fail"))
    assert (result.status, result.disposition) == (DmarcStatus.NONE, DmarcPolicy.NONE)
    assert result.record is None


def test_several_records_mean_no_policy() -> None:
    assert _evaluate("two.example", None).status is DmarcStatus.NONE


def test_other_txt_records_are_ignored() -> None:
    result = _evaluate("example.edu", None)
    assert (result.status, result.disposition) == (DmarcStatus.FAIL, DmarcPolicy.NONE)


def test_invalid_record_is_permerror_without_action() -> None:
    result = _evaluate("bad.example", None)
    assert (result.status, result.disposition) == (DmarcStatus.PERMERROR, DmarcPolicy.NONE)


def test_dns_failure_is_temperror() -> None:
    resolver = FakeResolver(ZONE)
    resolver.tempfail.add("_dmarc.example.com")
    result = _evaluate("example.com", SPF_PASS, resolver=resolver)
    assert (result.status, result.disposition) == (DmarcStatus.TEMPERROR, DmarcPolicy.NONE)
    org_down = FakeResolver(ZONE)
    org_down.tempfail.add("_dmarc.example.org")
    assert _evaluate("a.example.org", None, resolver=org_down).status is DmarcStatus.TEMPERROR


@pytest.mark.parametrize(
    ("spf", "dkim"),
    [
        (SpfOutcome("example.com", "temperror"), ()),
        (SpfOutcome("mail.example.com", "temperror"), [DkimOutcome("other.example", "pass")]),
        (SpfOutcome("other.example", "pass"), [DkimOutcome("example.com", "temperror")]),
    ],
)
def test_aligned_temperror_without_a_pass_is_temperror_with_the_failing_disposition(
    spf: SpfOutcome, dkim: Sequence[DkimOutcome]
) -> None:
    # RFC 7208 §2.6.6, RFC 7489 §11.2: an aligned check that could not finish might have
    # passed; the caller defers what p=reject would refuse (issue 14: it was "fail", 550).
    result = _evaluate("example.com", spf, dkim)
    assert (result.status, result.disposition) == (DmarcStatus.TEMPERROR, DmarcPolicy.REJECT)


def test_unaligned_temperror_cannot_change_a_failure() -> None:
    spf = SpfOutcome("other.example", "temperror")
    result = _evaluate("example.com", spf, [DkimOutcome("third.example", "temperror")])
    assert (result.status, result.disposition) == (DmarcStatus.FAIL, DmarcPolicy.REJECT)
    # And one aligned pass still decides, whatever else failed for now.
    passed = _evaluate("example.com", spf, [DkimOutcome("example.com", "pass")])
    assert passed.status is DmarcStatus.PASS


@pytest.mark.parametrize(
    ("draw", "disposition", "sampled_out"),
    [(0.10, DmarcPolicy.QUARANTINE, False), (0.80, DmarcPolicy.NONE, True)],
)
def test_pct_sampling(draw: float, disposition: DmarcPolicy, sampled_out: bool) -> None:
    # RFC 7489 §6.6.4: pct=25 quarantines a quarter; the rest gets the next policy down.
    result = _evaluate("example.org", None, rng=draw)
    assert (result.status, result.disposition, result.sampled_out) == (
        DmarcStatus.FAIL,
        disposition,
        sampled_out,
    )


def test_pct_turns_reject_into_quarantine() -> None:
    resolver = FakeResolver({("_dmarc.example.com", RdType.TXT): ["v=DMARC1; p=reject; pct=0"]})
    result = _evaluate("example.com", None, rng=0.0, resolver=resolver)
    assert (result.disposition, result.policy) == (DmarcPolicy.QUARANTINE, DmarcPolicy.REJECT)
