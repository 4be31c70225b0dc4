"""The milters of `[[milter]]` at the end of DATA, in order, and what Hato does with their
answers.

Theory of operation. After our own checks and rspamd's (finish.py), each milter configured
for the listener's role is shown the message as it will be stored (our header lines on top,
then the spooled message read back chunk by chunk: never a second full copy in memory) with
the connection's and envelope's facts (hato.milter.client). Its final word decides:
continue or accept go on to the next milter; reject (550 5.7.1), tempfail (451 4.7.1) or a
reply code of its own refuse the message; discard answers 250 and stores nothing (the
milter's explicit wish, as in Postfix). Its modifications apply before anything is
committed: a field it adds (or inserts) goes into the stored prefix; a field it changes or
deletes, or a new body, means a new spool body is written with the edits (`rebuild`) and the
old one discarded, so no stored body is ever rewritten; a new body is written to a spool body
of its own as its pieces come (`NewBody`: never held in memory, at most the listener's
message size, past which the milter is taken as unavailable) and the 250 still comes only once
the modified message is durable (the caller commits it). Quarantine (SMFIR_QUARANTINE) has
the message committed held, as Postfix puts it in its hold queue: it stays in the queue,
untried, until an operator runs `hato queue release` (or deletes it). Our DKIM signature
and ARC set are made after the milters (finish.py), over what they leave. A new sender,
added and deleted recipients are collected for the caller, which applies them before the
commit (milterenvelope.py). A milter that cannot be
asked follows its default_action: tempfail (451 4.3.0, never a 250 for mail that was not
checked) or accept; either way logged (`milter-unavailable`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hato.intake.miltermetrics import UNCOUNTED, MilterMetrics, Stage
from hato.intake.spamcheck import Spooled, field_bytes, read_back, streamed
from hato.milter import MilterClient, MilterUnavailable, Outcome, Transaction
from hato.milter.protocol import (
    Accept,
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    MilterProtocolError,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    Skip,
    Tempfail,
)
from hato.model import Reply, Role, logfmt
from hato.model.header import split_header_fields

log = logging.getLogger("hato.smtpd")

# RFC 5321 §4.2.2 451 local error; RFC 3463 §3.4 X.3.0: the content filter did not answer.
UNCHECKED = Reply(451, "4.3.0", "Content filter unavailable, please try again later")
# RFC 5321 §4.2.2 550 / 451; RFC 3463 §3.8 X.7.1: delivery not authorized, message refused.
REJECTED = Reply(550, "5.7.1", "Message refused by content filter")
DEFERRED = Reply(451, "4.7.1", "Message deferred by content filter, try again later")
# A milter's discard: 250 to the client, nothing stored (RFC 5321 §4.2.2 250).
DISCARDED = Reply(250, "2.0.0", "Ok")
_ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")  # RFC 3463 §2 class.subject.detail
_BARE_LF = re.compile(rb"(?<!\r)\n")


class DefaultAction(enum.StrEnum):
    """Postfix's milter_default_action, for a milter that cannot be asked."""

    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


@dataclass(frozen=True, slots=True)
class MilterFilter:
    """One `[[milter]]` (built by the composition root)."""

    client: MilterClient
    roles: tuple[Role, ...] = (Role.MX,)
    default_action: DefaultAction = DefaultAction.TEMPFAIL
    metrics: MilterMetrics = UNCOUNTED  # /metrics (miltermetrics.py)


@dataclass(slots=True)
class Milted:
    """The message after the milters: its prefix and body (maybe a new copy), and what
    happens to it."""

    prefix: bytes
    body: Spooled
    refusal: Reply | None = None  # DISCARDED (a 250) when a milter discarded it
    hold: bool = False  # SMFIR_QUARANTINE: queued held (Postfix's hold queue)
    envelope: list[AddRecipient | DeleteRecipient | ChangeFrom] = field(default_factory=list)


class NewBody:
    """A milter's new body (SMFIR_REPLBODY) as its pieces come: bare LFs made CRLF (RFC 5322
    §2.3; libmilter's milters may send LF), written into a spool body of the message's kind
    (`make`: a keyed recipient's plaintext stays in encrypted scratch), at most `limit`
    octets (0: no limit)."""

    def __init__(self, make: Callable[[], Spooled], limit: int = 0) -> None:
        self._make = make
        self._limit = limit
        self.body: Spooled | None = None
        self.size = 0
        self._tail = b""  # the last two octets written

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        if self._limit and self.size > self._limit:
            raise MilterProtocolError(f"a new body over {self._limit} octets")
        if not data:
            return
        if self._tail.endswith(b"\r") and data.startswith(b"\n"):
            out = b"\n" + _BARE_LF.sub(b"\r\n", data[1:])  # a CRLF across two pieces
        else:
            out = _BARE_LF.sub(b"\r\n", data)
        self._write(out)

    def _write(self, data: bytes) -> None:
        if self.body is None:
            self.body = self._make()
        self.body.write(data)
        self._tail = (self._tail + data)[-2:]

    def finish(self) -> Spooled:
        """The new body, ending with CRLF unless empty."""
        if self._tail and self._tail != b"\r\n":
            self._write(b"\r\n")
        if self.body is None:
            self.body = self._make()
        return self.body

    def discard(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None


async def milter_check(
    milters: tuple[MilterFilter, ...],
    tx: Transaction,
    queue_id: str,
    prefix: bytes,
    body: Spooled,
    new_body: Callable[[], Spooled],
    limit: int = 0,
) -> Milted:
    """Every milter in order over `prefix` + `body`; the first refusal ends it. `limit`: the
    largest new body a milter may give (the listener's message size; 0: none)."""
    state = Milted(prefix, body)
    for milter in milters:
        address = milter.client.address
        started = time.monotonic()
        replacement = NewBody(new_body, limit)
        try:
            outcome = await milter.client.check(
                tx, streamed(state.prefix, state.body), replacement=replacement
            )
        except MilterUnavailable as exc:
            replacement.discard()
            action = milter.default_action
            seconds = time.monotonic() - started
            milter.metrics.unavailable(address, Stage.MESSAGE, exc, action.value, seconds)
            log.warning(logfmt("milter-unavailable", id=queue_id, milter=address, error=exc,
                               action=action.value))  # fmt: skip
            if action is DefaultAction.TEMPFAIL:
                state.refusal = UNCHECKED
                return state
            continue
        reply = type(outcome.final).__name__.lower()
        milter.metrics.answered(address, Stage.MESSAGE, reply, time.monotonic() - started)
        milter.metrics.changed(address, outcome.modifications)
        log.info(logfmt("milter", id=queue_id, milter=address, reply=reply,
                        changes=len(outcome.modifications) or None))  # fmt: skip
        state.refusal = refusal(outcome)
        if state.refusal is not None:
            replacement.discard()
            return state
        await apply(state, outcome, queue_id, address, new_body, replacement)
    return state


def refusal(outcome: Outcome) -> Reply | None:
    """The reply a milter's final word gives the client, None to go on."""
    final = outcome.final
    match final:
        case Continue() | Accept() | Skip():
            return None
        case Reject():
            return REJECTED
        case Tempfail():
            return DEFERRED
        case Discard():
            return DISCARDED
        case ReplyCode(code=code, text=text):
            return custom_reply(code, text)
    return None  # pragma: no cover (every Final is matched above)


def custom_reply(code: int, text: str) -> Reply:
    """SMFIR_REPLYCODE's "550 5.7.1 text" as a reply; an enhanced code of the wrong class is
    replaced by the generic one (RFC 3463 §2: its class matches the reply's first digit)."""
    first, _, rest = text.partition(" ")
    clean = "".join(c for c in text if " " <= c <= "~")[:200]
    if _ENHANCED.match(first) and first[0] == str(code)[0]:
        return Reply(code, first, "".join(c for c in rest if " " <= c <= "~")[:200] or "Refused")
    enhanced = "5.7.1" if code >= 500 else "4.7.1"
    return Reply(code, enhanced, clean or "Refused by content filter")


async def apply(
    state: Milted,
    outcome: Outcome,
    queue_id: str,
    address: str,
    new_body: Callable[[], Spooled],
    replacement: NewBody,
) -> None:
    """A milter's modifications on `state`: additions in the prefix, edits in a new body
    (the new body, if any, already in `replacement`)."""
    edits: list[ChangeHeader] = []
    replaced = False
    for change in outcome.modifications:
        match change:
            case AddHeader(name=name, value=value):
                state.prefix += field_bytes(name, value)
            case InsertHeader(index=index, name=name, value=value):
                line = field_bytes(name, value)
                state.prefix = line + state.prefix if index == 0 else state.prefix + line
            case ChangeHeader():
                edits.append(change)
            case ReplaceBody(data=data):
                replaced = True
                replacement(data)  # b"": the client wrote it there already
            case Quarantine(reason=reason):
                state.hold = True
                log.info(logfmt("milter-quarantine", id=queue_id, milter=address, reason=reason))
            case AddRecipient() | DeleteRecipient() | ChangeFrom():
                state.envelope.append(change)  # applied by the caller (milterenvelope.py)
    if not replaced:
        replacement.discard()
    if edits or replaced:
        # Made on the loop (the queue's ids are not thread-safe).
        fresh = new_body()
        new = replacement.finish() if replaced else None
        state.body = await asyncio.to_thread(rebuild, state.prefix, state.body, edits, new, fresh)
        state.prefix = b""


def edit_section(section: bytes, edits: list[ChangeHeader]) -> bytes:
    """The header section with each SMFIR_CHGHEADER applied: the index-th (from 1) field of
    that name replaced, or deleted when the value is empty; past the last one, added."""
    fields = [(f.name.lower(), f.raw) for f in split_header_fields(section)]
    for edit in edits:
        name = edit.name.lower().encode()
        seen = 0
        for position, (field_name, _) in enumerate(fields):
            if field_name == name:
                seen += 1
                if seen == max(edit.index, 1):
                    new = field_bytes(edit.name, edit.value) if edit.value else b""
                    fields[position] = (field_name, new)
                    break
        else:
            if edit.value:
                fields.append((name, field_bytes(edit.name, edit.value)))
    return b"".join(raw for _, raw in fields)


def rebuild(
    prefix: bytes,
    body: Spooled,
    edits: list[ChangeHeader],
    replacement: Spooled | None,
    new_body: Spooled,
) -> Spooled:
    """`prefix` + the message, its header section edited and (with `replacement`, a milter's
    new body, CRLF lines) its body replaced, written into `new_body` (of the same kind as
    `body`: a keyed recipient's plaintext stays in encrypted scratch); the old body and the
    replacement discarded. Blocks: run it in a worker thread."""
    chunks = read_back(body)
    head = bytearray(prefix)
    rest = b""
    for chunk in chunks:
        head += chunk
        # RFC 5322 §2.1: the header section ends at the first empty line.
        end = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if end != -1:
            rest = bytes(head[end + 2 :])
            del head[end + 2 :]
            break
    new_body.write(edit_section(bytes(head), edits))
    if replacement is None:
        new_body.write(rest)
        for chunk in chunks:
            new_body.write(chunk)
    else:
        new_body.write(b"\r\n")  # RFC 5322 §2.1: the empty line, then the new body
        for piece in read_back(replacement):
            new_body.write(piece)
        replacement.discard()
    body.discard()
    return new_body
