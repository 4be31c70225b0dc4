"""Relay control: no open relay on mx, unknown users refused at RCPT time."""

from hato.model import Role
from hato.policy import (
    Accept,
    Defer,
    HeaderFacts,
    RecipientFacts,
    Reject,
    SenderFacts,
    header_decision,
    mail_from_decision,
    rcpt_decision,
)


def test_known_local_recipient_is_accepted_on_mx() -> None:
    assert rcpt_decision(RecipientFacts(Role.MX, local_domain=True, known=True)) == Accept()


def test_unknown_local_recipient_gets_550_5_1_1() -> None:
    decision = rcpt_decision(RecipientFacts(Role.MX, local_domain=True, known=False))
    assert isinstance(decision, Reject)
    assert (decision.reply.code, decision.reply.enhanced) == (550, "5.1.1")


def test_foreign_domain_on_mx_is_relaying_denied_even_when_authenticated() -> None:
    for auth in (False, True):
        facts = RecipientFacts(Role.MX, local_domain=False, known=False, authenticated=auth)
        decision = rcpt_decision(facts)
        assert isinstance(decision, Reject)
        assert (decision.reply.code, decision.reply.enhanced) == (550, "5.7.1")


def test_foreign_domain_on_submission_needs_authentication() -> None:
    anon = rcpt_decision(RecipientFacts(Role.SUBMISSION, local_domain=False, known=False))
    assert isinstance(anon, Reject)
    authed = RecipientFacts(Role.SUBMISSION, local_domain=False, known=False, authenticated=True)
    assert rcpt_decision(authed) == Accept()


def test_full_queue_defers_mail_from_with_452_4_3_1() -> None:
    decision = mail_from_decision(SenderFacts(Role.MX, queue_has_room=False))
    assert isinstance(decision, Defer)
    assert (decision.reply.code, decision.reply.enhanced) == (452, "4.3.1")
    assert mail_from_decision(SenderFacts(Role.MX, queue_has_room=True)) == Accept()


def test_own_domain_sender_on_mx_without_auth_is_refused() -> None:
    facts = SenderFacts(Role.MX, queue_has_room=True, sender_is_local=True)
    decision = mail_from_decision(facts)
    assert isinstance(decision, Reject)
    assert (decision.reply.code, decision.reply.enhanced) == (550, "5.7.1")
    assert "submission" in decision.reply.text
    foreign = SenderFacts(Role.MX, queue_has_room=True, sender_is_local=False)
    assert mail_from_decision(foreign) == Accept()


def test_authenticated_sender_must_be_owned() -> None:
    for role in (Role.SUBMISSION, Role.SUBMISSIONS):
        owned = SenderFacts(role, queue_has_room=True, authenticated=True, sender_owned=True)
        assert mail_from_decision(owned) == Accept()
        stolen = SenderFacts(role, queue_has_room=True, authenticated=True, sender_owned=False)
        decision = mail_from_decision(stolen)
        assert isinstance(decision, Reject)
        assert (decision.reply.code, decision.reply.enhanced) == (553, "5.7.1")


def _reply(facts: HeaderFacts) -> tuple[int, str | None, str]:
    decision = header_decision(facts)
    assert isinstance(decision, Reject)
    return decision.reply.code, decision.reply.enhanced, decision.reply.text


def test_header_section_must_be_well_formed_with_owned_authors() -> None:
    assert header_decision(HeaderFacts()) == Accept()
    assert _reply(HeaderFacts(unowned_field="From"))[:2] == (553, "5.7.1")
    assert _reply(HeaderFacts(unowned_field="Sender"))[2].startswith("Sender: ")
    assert _reply(HeaderFacts(from_fields=2))[:2] == (550, "5.7.1")
    code, enhanced, text = _reply(HeaderFacts(malformed_line=3, unowned_field="From"))
    assert (code, enhanced) == (554, "5.6.0") and "line 3" in text
    assert (
        HeaderFacts(unowned_field="Resent-From", from_fields=2).problem == "resent-from-not-owned"
    )
