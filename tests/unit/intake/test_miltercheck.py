"""What Hato does with a milter's answer: the reply the client gets, header fields added in
the prefix, changed or deleted fields and a new body in a new spool copy (the old one
discarded), quarantine as Junk, nothing edited under our ARC seal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hato.crypto.scratch import SealedScratch
from hato.intake.miltercheck import (
    DISCARDED,
    UNCHECKED,
    DefaultAction,
    Milted,
    MilterFilter,
    custom_reply,
    edit_section,
    milter_check,
    refusal,
)
from hato.intake.spamcheck import read_back
from hato.milter import MilterClient, MilterUnavailable, Outcome, Transaction
from hato.milter.protocol import (
    Accept,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    Continue,
    Discard,
    Final,
    InsertHeader,
    MilterProtocolError,
    Modification,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    Tempfail,
)
from hato.model import Reply

TX = Transaction("[192.0.2.1]", "192.0.2.1", 0, "h", "<a@b>", (), ("<c@d>",))
MESSAGE = b"Subject: hi\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody\r\n"


class Scripted(MilterClient):
    """A milter client that answers from a script (the wire is tested in tests/unit/milter)."""

    def __init__(self, final: Final | None, changes: tuple[Modification, ...] = ()) -> None:
        super().__init__("inet:127.0.0.1:9")
        self.final, self.changes = final, changes
        self.seen: list[bytes] = []

    async def check(
        self,
        tx: Transaction,
        message: AsyncIterator[bytes],
        replacement: Callable[[bytes], None] | None = None,
    ) -> Outcome:
        self.seen.append(b"".join([chunk async for chunk in message]))
        if self.final is None:
            raise MilterUnavailable("down")
        changes = self.changes
        if replacement is not None:  # as the client does: a new body's pieces go there
            changes = tuple(self._streamed(changes, replacement))
        return Outcome(self.final, changes)

    @staticmethod
    def _streamed(
        changes: tuple[Modification, ...], replacement: Callable[[bytes], None]
    ) -> Iterator[Modification]:
        for change in changes:
            if isinstance(change, ReplaceBody):
                try:
                    replacement(change.data)
                except MilterProtocolError as exc:
                    raise MilterUnavailable(str(exc)) from exc
                change = ReplaceBody(b"")
            yield change


def _spooled(tmp_path: Path, data: bytes = MESSAGE) -> SealedScratch:
    body = SealedScratch(str(tmp_path))
    body.write(data)
    return body


def _run(
    tmp_path: Path, *milters: MilterFilter, prefix: bytes = b"A-R: ok\r\n", limit: int = 0
) -> Milted:
    body = _spooled(tmp_path)
    return asyncio.run(
        milter_check(milters, TX, "q1", prefix, body, lambda: SealedScratch(str(tmp_path)), limit)
    )


@pytest.mark.parametrize(
    ("final", "reply"),
    [
        (Continue(), None),
        (Accept(), None),
        (Reject(), Reply(550, "5.7.1", "Message refused by content filter")),
        (Tempfail(), Reply(451, "4.7.1", "Message deferred by content filter, try again later")),
        (Discard(), DISCARDED),
        (ReplyCode(554, "5.7.1 Gtube pattern"), Reply(554, "5.7.1", "Gtube pattern")),
        (ReplyCode(554, "4.7.1 wrong class"), Reply(554, "5.7.1", "4.7.1 wrong class")),
        (ReplyCode(421, "no enhanced code"), Reply(421, "4.7.1", "no enhanced code")),
    ],
)
def test_the_final_word_becomes_the_reply(final: Final, reply: Reply | None) -> None:
    assert refusal(Outcome(final)) == reply


def test_custom_reply_keeps_printable_ascii_only() -> None:
    assert custom_reply(550, "5.7.1 bad\x07 news\r\n") == Reply(550, "5.7.1", "bad news")


def test_added_fields_go_into_the_prefix_without_a_copy(tmp_path: Path) -> None:
    changes = (AddHeader("X-A", "1"), InsertHeader(0, "X-Top", "t"), InsertHeader(3, "X-B", "2"))
    milted = _run(tmp_path, MilterFilter(Scripted(Accept(), changes)))
    assert milted.refusal is None
    assert milted.prefix == b"X-Top: t\r\nA-R: ok\r\nX-A: 1\r\nX-B: 2\r\n"
    assert b"".join(read_back(milted.body)) == MESSAGE


def test_changed_fields_and_a_new_body_make_a_new_copy(tmp_path: Path) -> None:
    changes = (
        ChangeHeader(2, "X-Old", ""),  # the second X-Old goes
        ChangeHeader(1, "Subject", "new"),
        ChangeHeader(1, "X-Absent", "added"),
        ReplaceBody(b"line one\nline two"),
        Quarantine("virus"),
    )
    second = Scripted(Continue())
    milted = _run(tmp_path, MilterFilter(Scripted(Continue(), changes)), MilterFilter(second))
    stored = milted.prefix + b"".join(read_back(milted.body))
    assert stored == (
        b"A-R: ok\r\nSubject: new\r\nX-Old: 1\r\nX-Absent: added\r\n\r\nline one\r\nline two\r\n"
    )
    assert milted.hold
    assert second.seen == [stored]  # the next milter sees the edited message


def test_a_new_body_in_pieces_is_spooled_with_its_line_ends_made_crlf(tmp_path: Path) -> None:
    # libmilter's smfi_replacebody may cut the body anywhere, a CRLF too.
    pieces = (ReplaceBody(b"one\r"), ReplaceBody(b"\ntwo\nthree"), ReplaceBody(b""))
    milted = _run(tmp_path, MilterFilter(Scripted(Continue(), pieces)), limit=100)
    stored = milted.prefix + b"".join(read_back(milted.body))
    assert stored.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\n"), stored


@pytest.mark.parametrize("action", list(DefaultAction))
def test_a_new_body_over_the_message_size_is_a_milter_failure(
    tmp_path: Path, action: DefaultAction
) -> None:
    """DESIGN.md, memory per message is bounded: a milter's new body past the listener's
    message size is nonsense (its default action applies), never held or stored."""
    pieces = (ReplaceBody(b"x" * 60), ReplaceBody(b"y" * 60))
    milter = MilterFilter(Scripted(Continue(), pieces), default_action=action)
    milted = _run(tmp_path, milter, limit=100)
    if action is DefaultAction.TEMPFAIL:
        assert milted.refusal == UNCHECKED
    else:
        assert milted.refusal is None
        assert milted.prefix + b"".join(read_back(milted.body)) == b"A-R: ok\r\n" + MESSAGE


def test_a_refusal_stops_the_list_and_envelope_changes_are_not_applied(tmp_path: Path) -> None:
    later = Scripted(Continue())
    first = Scripted(Continue(), (AddRecipient("<x@y>", ""),))
    milted = _run(
        tmp_path, MilterFilter(first), MilterFilter(Scripted(Reject())), MilterFilter(later)
    )
    assert milted.refusal is not None and milted.refusal.code == 550
    assert later.seen == []


@pytest.mark.parametrize("action", list(DefaultAction))
def test_a_milter_down_follows_its_default_action(tmp_path: Path, action: DefaultAction) -> None:
    after = Scripted(Continue())
    milted = _run(
        tmp_path, MilterFilter(Scripted(None), default_action=action), MilterFilter(after)
    )
    if action is DefaultAction.TEMPFAIL:
        assert milted.refusal == UNCHECKED and after.seen == []
    else:
        assert milted.refusal is None and len(after.seen) == 1


def test_edit_section_deletes_and_replaces_by_occurrence() -> None:
    section = b"A: 1\r\nB: 2\r\nA: 3\r\n"
    assert edit_section(section, [ChangeHeader(2, "a", "")]) == b"A: 1\r\nB: 2\r\n"
    assert edit_section(section, [ChangeHeader(1, "A", "x")]) == b"A: x\r\nB: 2\r\nA: 3\r\n"
    assert edit_section(section, [ChangeHeader(5, "A", "")]) == section
