"""authcheck/ownfrom.py: DMARC for one of our domains as if it published p=reject."""

from __future__ import annotations

from hato.authcheck import DmarcPolicy, DmarcResult, DmarcStatus
from hato.authcheck.dmarc import DkimOutcome, SpfOutcome
from hato.authcheck.ownfrom import as_if_reject

NO_RECORD = DmarcResult(DmarcStatus.NONE, DmarcPolicy.NONE, "example.org")
SPF_ELSEWHERE = SpfOutcome("stranger.test", "pass")


def test_no_record_and_nothing_aligned_fails() -> None:
    assert as_if_reject(NO_RECORD, SPF_ELSEWHERE, []) is DmarcStatus.FAIL
    assert as_if_reject(NO_RECORD, None, [DkimOutcome("stranger.test", "pass")]) is (
        DmarcStatus.FAIL
    )
    # Aligned but failing checks fail too.
    failing = [DkimOutcome("example.org", "fail")]
    assert as_if_reject(NO_RECORD, SpfOutcome("example.org", "softfail"), failing) is (
        DmarcStatus.FAIL
    )


def test_relaxed_alignment_passes() -> None:
    assert as_if_reject(NO_RECORD, SpfOutcome("bounces.example.org", "pass"), []) is (
        DmarcStatus.PASS
    )
    assert as_if_reject(NO_RECORD, None, [DkimOutcome("mail.example.org", "pass")]) is (
        DmarcStatus.PASS
    )


def test_an_aligned_temperror_is_a_temperror() -> None:
    result = as_if_reject(NO_RECORD, SpfOutcome("example.org", "temperror"), [])
    assert result is DmarcStatus.TEMPERROR


def test_a_record_decision_stands() -> None:
    for status in (DmarcStatus.PASS, DmarcStatus.FAIL, DmarcStatus.TEMPERROR):
        decided = DmarcResult(status, DmarcPolicy.NONE, "example.org")
        assert as_if_reject(decided, None, []) is status
    broken = DmarcResult(DmarcStatus.PERMERROR, DmarcPolicy.NONE, "example.org")
    assert as_if_reject(broken, SPF_ELSEWHERE, []) is DmarcStatus.FAIL
