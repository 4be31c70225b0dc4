"""SMFIR_CHGFROM: the new sender and the RFC 3461 parameters Postfix 3.3+ takes from it."""

from __future__ import annotations

from hato.intake.milterenvelope import new_sender
from hato.milter.protocol import ChangeFrom
from hato.model import Address

OLD = Address("alice", "sender.example")


def test_a_new_sender_with_ret_and_envid_taken_and_others_ignored() -> None:
    params: dict[str, str | None] = {"SIZE": "10"}
    change = ChangeFrom("<bounces@sender.example>", "RET=hdrs ENVID=abc+2Bdef FOO=1 ENVID=a=b")
    assert new_sender(change, OLD, params, "q1") == Address("bounces", "sender.example")
    # RFC 3461 §4.3 RET upper-cased; §4.4 ENVID kept as xtext; "a=b" is not xtext ("=").
    assert params == {"SIZE": "10", "RET": "HDRS", "ENVID": "abc+2Bdef"}


def test_the_null_sender_and_a_bad_address() -> None:
    params: dict[str, str | None] = {}
    assert new_sender(ChangeFrom("<>", ""), OLD, params, "q1") is None
    assert new_sender(ChangeFrom("<not an address>", ""), OLD, params, "q1") == OLD
    assert params == {}
