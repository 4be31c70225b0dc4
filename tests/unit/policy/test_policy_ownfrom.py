"""policy/ownfrom.py: a From in our own domains on port 25 (RFC 7489 §6.6.4 local policy)."""

from __future__ import annotations

import ipaddress

from hato.policy import (
    OWN_DOMAIN_SPOOF,
    Accept,
    Defer,
    DisplayNameAction,
    DisplayNameFacts,
    OwnDomainAction,
    OwnDomains,
    OwnFromFacts,
    Quarantine,
    Reject,
    display_name_decision,
    own_from_decision,
)
from hato.policy.ownfrom import OWN_NAME_SPOOF, OWN_SENDER_SPOOF

FAILED = OwnFromFacts(passed=False, temperror=False)


def test_a_failure_is_refused_by_default() -> None:
    assert own_from_decision(OwnDomains(), FAILED) == Reject(OWN_DOMAIN_SPOOF)
    assert (OWN_DOMAIN_SPOOF.code, OWN_DOMAIN_SPOOF.enhanced) == (550, "5.7.1")


def test_a_pass_a_relay_or_a_trusted_seal_is_accepted() -> None:
    rule = OwnDomains()
    assert own_from_decision(rule, OwnFromFacts(passed=True, temperror=False)) == Accept()
    assert own_from_decision(rule, OwnFromFacts(False, False, relayed=True)) == Accept()
    assert own_from_decision(rule, OwnFromFacts(False, False, arc_trusted=True)) == Accept()


def test_a_temperror_is_deferred_never_refused() -> None:
    decision = own_from_decision(OwnDomains(), OwnFromFacts(passed=False, temperror=True))
    assert isinstance(decision, Defer) and decision.reply.code == 451


def test_the_other_actions() -> None:
    assert own_from_decision(OwnDomains(OwnDomainAction.QUARANTINE), FAILED) == Quarantine()
    assert own_from_decision(OwnDomains(OwnDomainAction.DMARC), FAILED) == Accept()


def test_relays_match_by_address_ipv4_mapped_too() -> None:
    rule = OwnDomains(relays=(ipaddress.ip_network("192.0.2.0/28"),))
    assert rule.relayed("192.0.2.7") and rule.relayed("::ffff:192.0.2.7")
    assert not rule.relayed("192.0.2.16") and not rule.relayed("") and not rule.relayed("x")
    assert not OwnDomains().relayed("192.0.2.7")


def test_sealers_compare_case_and_dot_insensitively() -> None:
    rule = OwnDomains(arc_sealers=frozenset({"lists.example.net"}))
    assert rule.sealed_by_trusted("Lists.Example.NET.")
    assert not rule.sealed_by_trusted("example.net")


def test_a_sender_field_gets_its_own_reply() -> None:
    facts = OwnFromFacts(passed=False, temperror=False, sender_field=True)
    assert own_from_decision(OwnDomains(), facts) == Reject(OWN_SENDER_SPOOF)
    assert (OWN_SENDER_SPOOF.code, OWN_SENDER_SPOOF.enhanced) == (550, "5.7.1")
    assert own_from_decision(OwnDomains(OwnDomainAction.DMARC), facts) == Accept()


def test_a_display_name_of_ours_is_quarantined_by_default_never_refused() -> None:
    assert display_name_decision(OwnDomains(), DisplayNameFacts()) == Quarantine()
    strict = OwnDomains(display_names=DisplayNameAction.REJECT)
    assert display_name_decision(strict, DisplayNameFacts()) == Reject(OWN_NAME_SPOOF)
    for facts in (DisplayNameFacts(relayed=True), DisplayNameFacts(vouched=True)):
        assert display_name_decision(strict, facts) == Accept()
    off = OwnDomains(display_names=DisplayNameAction.ACCEPT)
    assert display_name_decision(off, DisplayNameFacts()) == Accept()
