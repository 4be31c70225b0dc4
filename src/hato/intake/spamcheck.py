"""Rspamd's verdict on a message at the end of DATA, and what Hato does with it.

Theory of operation. Once our own SPF/DKIM/DMARC results are known (finish.py), the message as
it will be stored (our Authentication-Results on top, then the spooled body, read back chunk by
chunk: never a second full copy in memory) goes to rspamd with the envelope, the client's IP
and HELO name and the authenticated user (and, with `trust_our_checks`, our SPF/DKIM/DMARC/ARC
results as rspamd's own symbols, its checks off: spamauth.py). Rspamd's action becomes one of
ours, as `[rspamd]` maps it: refuse (550 5.7.1 with rspamd's public reason), try later (451
4.7.1), deliver into the Junk folder (Maildir++ `.Junk`, as DMARC quarantine does), rewrite the
Subject, or deliver to the inbox; the header fields rspamd asks to add or remove are applied on
every delivered message. Header changes other than additions need a new header section: the
message is copied into a new spool body with the section edited (`rewrite`), before anything is
committed, so no stored body is ever rewritten. When rspamd cannot answer, the configured
policy decides: tempfail (451, never a 250 for mail that was not checked) or accept unchecked;
either way it is logged (`rspamd-unavailable`) and counted.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from email.header import Header
from itertools import starmap
from typing import Protocol

from hato.crypto.scratch import SealedScratch
from hato.filters import Envelope, RspamdAction, RspamdClient, RspamdUnavailable, Scan
from hato.intake.spamauth import rspamd_settings
from hato.model import Reply, Role, logfmt
from hato.model.header import split_header_fields
from hato.queue import BodyWriter

log = logging.getLogger("hato.smtpd")

# RFC 3463 §3.8 X.7.1: delivery not authorized, message refused (rspamd's reject).
DEFAULT_REJECT_TEXT = "Message refused as spam"
# RFC 3463 §3.8 X.7.1 in a 4xx: rspamd's soft reject and greylist, try again later.
DEFAULT_SOFT_TEXT = "Try again later"
# RFC 5321 §4.2.2 451 local error; RFC 3463 §3.4 X.3.0: the content filter did not answer.
UNCHECKED = Reply(451, "4.3.0", "Content filter unavailable, please try again later")
MAX_REASON = 200  # octets of rspamd's reason we repeat to the client


class Response(enum.StrEnum):
    """What Hato does for one of rspamd's actions."""

    INBOX = "inbox"  # deliver, with the header fields rspamd asked for
    JUNK = "junk"  # deliver into the recipients' Junk folder
    SUBJECT = "subject"  # deliver with rspamd's new Subject
    TEMPFAIL = "tempfail"  # 451 4.7.1
    REJECT = "reject"  # 550 5.7.1


class OnFailure(enum.StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


DEFAULT_RESPONSES: Mapping[RspamdAction, Response] = {
    RspamdAction.NO_ACTION: Response.INBOX,
    RspamdAction.ADD_HEADER: Response.JUNK,
    RspamdAction.REWRITE_SUBJECT: Response.SUBJECT,
    RspamdAction.GREYLIST: Response.TEMPFAIL,
    RspamdAction.SOFT_REJECT: Response.TEMPFAIL,
    RspamdAction.REJECT: Response.REJECT,
}


class SpamMetrics(Protocol):
    """What the check counts (hato.server.metrics.Metrics is one)."""

    def rspamd_verdict(self, action: str, seconds: float) -> None: ...

    def rspamd_unavailable(self, policy: str) -> None: ...


class Uncounted:
    def rspamd_verdict(self, action: str, seconds: float) -> None:
        pass

    def rspamd_unavailable(self, policy: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SpamFilter:
    """The rspamd check of one listener (built by the composition root)."""

    client: RspamdClient
    on_failure: OnFailure = OnFailure.TEMPFAIL
    responses: Mapping[RspamdAction, Response] = field(
        default_factory=lambda: dict(DEFAULT_RESPONSES)
    )
    max_size: int = 20 * 1024 * 1024
    metrics: SpamMetrics = field(default_factory=Uncounted)
    # Tell rspamd our SPF/DKIM/DMARC/ARC results instead of having it check again (spamauth.py).
    trust_our_checks: bool = False


@dataclass(frozen=True, slots=True)
class SpamOutcome:
    """What the check changes: fields to add on top, fields to take out of the header
    section, a new Subject, Junk, or a refusal."""

    header: bytes = b""
    remove: tuple[str, ...] = ()
    subject: str | None = None
    junk: bool = False
    refusal: Reply | None = None

    @property
    def edits_header(self) -> bool:
        return bool(self.remove) or self.subject is not None


ACCEPTED = SpamOutcome()


Spooled = BodyWriter | SealedScratch  # the message as received (keyed: encrypted scratch)


def read_back(body: Spooled) -> Iterator[bytes]:
    """The message from its start, chunk by chunk (blocking reads: iterate in a thread)."""
    return body.chunks() if isinstance(body, SealedScratch) else body.read_back()


async def streamed(prefix: bytes, body: Spooled) -> AsyncIterator[bytes]:
    """`prefix`, then the message, as a request body: one chunk in memory at a time."""
    if isinstance(body, BodyWriter) and body.inline:
        # Still in memory (under the queue's flush threshold): one chunk, one write to the
        # filter, no worker thread to read it back (a thread hop per chunk cost more CPU
        # than the rest of the upload for a 10 KB message).
        yield prefix + body.peek_inline()
        return
    if prefix:
        yield prefix
    reader = read_back(body)
    while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
        yield chunk


def in_memory(prefix: bytes, body: Spooled) -> tuple[bytes, ...] | None:
    """`prefix` and the message as parts of a request body, when the message is still in
    memory (under the queue's flush threshold): written with the request head in one
    gathering write, not joined into a new string first (post.py)."""
    if isinstance(body, BodyWriter) and body.inline:
        return (prefix, body.peek_inline()) if prefix else (body.peek_inline(),)
    return None


async def spam_check(
    spam: SpamFilter, role: Role, envelope: Envelope, prefix: bytes, body: Spooled
) -> SpamOutcome:
    """Rspamd's verdict on `prefix` + `body`, as Hato acts on it for `role`."""
    size = len(prefix) + body.size
    if size > spam.max_size:
        log.info(logfmt("rspamd-skipped", id=envelope.queue_id, size=size, reason="too large"))
        return ACCEPTED
    if spam.trust_our_checks and (settings := rspamd_settings(prefix)) is not None:
        envelope = replace(envelope, settings=settings)
    started = time.monotonic()
    try:
        parts = in_memory(prefix, body)
        scan = await spam.client.check(envelope, size, parts or streamed(prefix, body))
    except (RspamdUnavailable, OSError) as exc:
        spam.metrics.rspamd_unavailable(spam.on_failure.value)
        log.warning(logfmt("rspamd-unavailable", id=envelope.queue_id, error=exc,
                           action=spam.on_failure.value))  # fmt: skip
        return SpamOutcome(refusal=UNCHECKED) if spam.on_failure is OnFailure.TEMPFAIL else ACCEPTED
    spam.metrics.rspamd_verdict(scan.action.value, time.monotonic() - started)
    response = spam.responses.get(scan.action, Response.INBOX)
    if role is not Role.MX and response in (Response.JUNK, Response.SUBJECT, Response.INBOX):
        # Our user's outgoing mail: only a refusal applies (a spam Subject or rspamd's fields
        # would go to their correspondents, and a Junk folder is not theirs).
        response = Response.INBOX
    log.info(
        logfmt(
            "rspamd",
            id=envelope.queue_id,
            client=envelope.client_ip,
            user=envelope.user,
            action=scan.action.value,
            score=f"{scan.score:.2f}",
            response=response.value,
            symbols=",".join(scan.symbols[:20]) or None,
        )
    )
    return outcome(scan, response, edits=role is Role.MX)


def outcome(scan: Scan, response: Response, *, edits: bool = True) -> SpamOutcome:
    """What Hato does with `scan` when it has decided on `response`."""
    if response is Response.REJECT:
        # RFC 5321 §4.2.2 550 not taken, policy; RFC 3463 §3.8 X.7.1 message refused.
        return SpamOutcome(refusal=Reply(550, "5.7.1", public_text(scan, DEFAULT_REJECT_TEXT)))
    if response is Response.TEMPFAIL:
        # RFC 5321 §4.2.2 451, RFC 3463 §3.8 X.7.1: try again later (greylisting).
        return SpamOutcome(refusal=Reply(451, "4.7.1", public_text(scan, DEFAULT_SOFT_TEXT)))
    if not edits:
        return ACCEPTED
    header = b"".join(starmap(field_bytes, scan.add_headers))
    subject = scan.subject if response is Response.SUBJECT and scan.subject else None
    return SpamOutcome(
        header=header,
        remove=scan.remove_headers,
        subject=subject,
        junk=response is Response.JUNK,
    )


def public_text(scan: Scan, default: str) -> str:
    """Rspamd's reason for the client (messages.smtp_message), printable ASCII only."""
    text = "".join(c for c in (scan.smtp_message or "") if " " <= c <= "~").strip()
    return text[:MAX_REASON] or default


def field_bytes(name: str, value: str) -> bytes:
    """One header field from rspamd's name and value, CRLF line ends, folded lines kept
    (RFC 5322 §2.2.3: a continuation line starts with WSP) and non-ASCII encoded (RFC 2047)."""
    if value.isascii() and "\n" not in value and "\r" not in value:
        return f"{name}: {value.strip()}\r\n".encode("ascii")  # one line: most of rspamd's
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not value.isascii():
        lines = [Header(" ".join(line.strip() for line in lines), "utf-8").encode()]
    out = [f"{name}: {lines[0].strip()}"]
    out += [line if line[:1] in (" ", "\t") else "\t" + line for line in lines[1:] if line.strip()]
    return "\r\n".join(out).encode("ascii", "replace") + b"\r\n"


@functools.lru_cache(maxsize=64)  # rspamd asks every message to lose the same few fields
def _lowered_names(remove: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(name.lower().encode() for name in remove)


def edit_header(section: bytes, remove: tuple[str, ...], subject: str | None) -> bytes:
    """The header section without the fields named in `remove` and (with `subject`) with its
    Subject fields replaced by one carrying `subject` (RFC 5322 §3.6: at most one Subject)."""
    gone = _lowered_names(remove)
    if subject is None and not any(map(section.lower().__contains__, gone)):
        # None of them is there, not even as a substring (rspamd's milter_headers asks every
        # message to lose the X-Spam fields a clean message does not have): nothing to split.
        return section
    if subject is not None:
        gone |= {b"subject"}
    kept = [f.raw for f in split_header_fields(section) if f.name.lower() not in gone]
    new = field_bytes("Subject", subject) if subject is not None else b""
    return new + b"".join(kept)


async def rewritten(
    body: Spooled, outcome: SpamOutcome, new_body: Callable[[], Spooled]
) -> Spooled:
    """`rewrite` on the loop for a body still in memory (nothing blocks: no worker-thread
    hop, and no new body at all when rspamd's edits change nothing, the usual case: its
    milter_headers asks to remove fields a clean message does not have); else in a thread."""
    if not (isinstance(body, BodyWriter) and body.inline):
        # The new body is made on the loop (the queue's ids are not thread-safe).
        return await asyncio.to_thread(rewrite, body, outcome, new_body())
    data = body.peek_inline()
    # RFC 5322 §2.1: the header section ends at the first empty line (maybe the first).
    end = -2 if data.startswith(b"\r\n") else data.find(b"\r\n\r\n")
    section = data if end == -1 else data[: end + 2]
    edited = edit_header(section, outcome.remove, outcome.subject)
    if outcome.subject is None and len(edited) == len(section):
        return body
    fresh = new_body()
    fresh.write(edited + (b"" if end == -1 else data[end + 2 :]))
    body.discard()
    return fresh


def rewrite(body: Spooled, outcome: SpamOutcome, new_body: Spooled) -> Spooled:
    """The message with its header section edited, in `new_body` (of the same kind: a keyed
    recipient's plaintext stays in encrypted scratch), the old body discarded; what follows
    the header section is copied as is. Unchanged (no copy, `new_body` discarded) when no
    field to remove is there and the Subject stays. Blocks: run it in a worker thread."""
    chunks = read_back(body)
    head = bytearray()
    rest: bytes = b""
    for chunk in chunks:
        head += chunk
        # RFC 5322 §2.1: the header section ends at the first empty line (maybe the first).
        end = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if end != -1:
            rest = bytes(head[end + 2 :])
            del head[end + 2 :]
            break
    section = bytes(head)
    edited = edit_header(section, outcome.remove, outcome.subject)
    if outcome.subject is None and len(edited) == len(section):
        new_body.discard()
        return body  # nothing rspamd removes is there: no copy
    new_body.write(edited + rest)
    for chunk in chunks:
        new_body.write(chunk)
    body.discard()
    return new_body
