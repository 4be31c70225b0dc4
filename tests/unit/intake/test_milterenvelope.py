"""SMFIR_CHGFROM: the new sender and the RFC 3461 parameters Postfix 3.3+ takes from it;
SMFIR_ADDRCPT_PAR: the NOTIFY and ORCPT of an added recipient, on its rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_pipeline import ALICE, BOB, FAR, SALES, context

from hato.intake.milterenvelope import apply_envelope, new_sender
from hato.intake.transaction import NO_DSN
from hato.milter.protocol import AddRecipient, ChangeFrom, parse_reply
from hato.model import Address, Notify, RecipientDsn

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


def test_an_added_recipient_takes_notify_and_orcpt_on_each_of_its_rows(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.settings = dataclasses.replace(ctx.settings, dsn=True)  # as boot/build.py has it
    # The sans-IO core: SMFIR_ADDRCPT_PAR ('2') is the address and its parameters.
    args = "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@z X=1"
    change = parse_reply(b"2", f"<sales@example.org>\0{args}\0".encode())
    assert change == AddRecipient("<sales@example.org>", args)
    recipients = [(FAR, FAR)]
    dsn = {FAR: NO_DSN}
    plain = AddRecipient("<bob@example.org>", "")
    apply_envelope(ctx, recipients, [change, plain], "q1", FAR, {}, sealed=False, dsn=dsn)
    # sales@ expands to alice and bob (each once); the plain ADDRCPT adds nothing new.
    assert recipients == [(FAR, FAR), (ALICE, SALES), (BOB, SALES)]
    wanted = RecipientDsn(frozenset({Notify.SUCCESS, Notify.DELAY}), "rfc822;x+y@z")
    assert dsn == {FAR: NO_DSN, ALICE: wanted, BOB: wanted}


def test_bad_or_unoffered_parameters_are_not_taken(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx.settings = dataclasses.replace(ctx.settings, dsn=True)
    recipients: list[tuple[Address, Address]] = []
    dsn: dict[Address, RecipientDsn] = {}
    # RFC 3461 §4.1: NEVER stands alone; §4.2: ORCPT needs addr-type ";" xtext.
    bad = AddRecipient("<alice@example.org>", "NOTIFY=NEVER,SUCCESS ORCPT=nosemicolon")
    apply_envelope(ctx, recipients, [bad], "q1", FAR, {}, sealed=False, dsn=dsn)
    assert recipients == [(ALICE, ALICE)] and dsn == {}  # the RFC 3461 defaults
    ctx.settings = dataclasses.replace(ctx.settings, dsn=False)  # DSN not offered
    never = AddRecipient("<bob@example.org>", "NOTIFY=NEVER")
    apply_envelope(ctx, recipients, [never], "q1", FAR, {}, sealed=False, dsn=dsn)
    assert recipients == [(ALICE, ALICE), (BOB, BOB)] and dsn == {}
