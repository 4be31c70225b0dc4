"""authcheck/ownfrom.py: DMARC for one of our domains as if it published p=reject."""

from __future__ import annotations

from hato.authcheck import DmarcPolicy, DmarcResult, DmarcStatus
from hato.authcheck.dmarc import DkimOutcome, SpfOutcome
from hato.authcheck.ownfrom import (
    as_if_reject,
    below_own,
    display_name_domains,
    held,
    sender_domains,
)

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


# ---- which domains are held, and what the other fields name --------------------------------


def _ours(domain: str) -> bool:
    return domain == "example.org"


def test_a_name_below_ours_is_held_unless_it_has_its_own_record() -> None:
    assert below_own("billing.example.org", _ours) and below_own("a.b.example.org", _ours)
    assert not below_own("example.org", _ours) and not below_own("badexample.org", _ours)
    # RFC 7489 §6.6.3: example.org's record (or none at all) is the one that applied.
    by_ours = DmarcResult(DmarcStatus.NONE, DmarcPolicy.NONE, "x.example.org", "example.org")
    assert held(by_ours, _ours) and held(NO_RECORD, _ours)
    own_record = DmarcResult(
        DmarcStatus.FAIL, DmarcPolicy.NONE, "news.example.org", "news.example.org"
    )
    assert not held(own_record, _ours)
    # The lookup failed: held, so its temperror defers.
    lost = DmarcResult(DmarcStatus.TEMPERROR, DmarcPolicy.NONE, "x.example.org")
    assert held(lost, _ours)
    assert not held(DmarcResult(DmarcStatus.NONE, DmarcPolicy.NONE, "other.test"), _ours)


def test_a_walk_up_a_name_is_bounded_by_its_labels() -> None:
    asked: list[str] = []

    def is_own(domain: str) -> bool:
        asked.append(domain)
        return False

    below_own("a." * 200 + "example.org", is_own)
    assert len(asked) < 127  # RFC 1035 §2.3.4


def test_sender_fields_are_read_within_a_froms_bounds() -> None:
    assert sender_domains([]) == ()
    assert sender_domains(["<a@stranger.test>", "The CEO <CEO@Example.ORG.>"]) == (
        "stranger.test",
        "example.org",
    )
    assert sender_domains(["<>", "undisclosed"]) == ()  # no address: nothing of ours
    # Past what DMARC reads of a From: it cannot be said to name none of ours.
    assert sender_domains([", ".join(f"a@d{n}.test" for n in range(11))]) is None
    assert sender_domains(["a@b.test, " * 500]) is None  # over 4 KiB
    assert sender_domains(["(" * 600 + "ceo@example.org"]) is None


def test_display_names_and_comments_that_read_as_an_address() -> None:
    assert display_name_domains(['"ceo@example.org" <x@attacker.test>']) == (
        "example.org",
        "attacker.test",
    )
    assert "example.org" in display_name_domains(["x@attacker.test (ceo@Example.ORG.)"])
    assert "example.org" in display_name_domains(["=?utf-8?q?ceo=40example.org?= <x@a.test>"])
    # RFC 2047 §5 decoded, and the full-width letters a reader shows as ASCII (UTS #46).
    assert "example.org" in display_name_domains(['"ceo＠ｅxample.org" <x@a.test>'])
    # One address, nothing beside it: nothing to read further.
    assert display_name_domains(['"Example.org support" <x@attacker.test>']) == ()
    # Bounded: only MAX_FROM_SIZE of text is read.
    assert display_name_domains(["x" * 5000 + " ceo@example.org"]) == ()
