"""Who gets told what after a delivery attempt, and queueing the notice (RFC 3461, RFC 3464).

Must not import anything of hato but model and this room.

Theory of operation. After each attempt the runner asks `report_for` about every recipient:
a failure (permanent, or given up for age), a success, or a deferral past the delay-warning
age becomes a `RecipientReport` when the recipient's NOTIFY asks for it (RFC 3461 §4.1; by
default FAILURE and DELAY) and the message has a sender to tell (never the null path). The
`Notifier` then builds ONE DSN for all the reports of that attempt and commits it to the
queue as a new message from `<>`, through the same durable path as mail from a client, so it
is delivered like any other mail (Maildir or outbound). It is committed before the attempt's
outcomes are recorded: a crash in between can repeat a notice, never lose one. The commit is a
`Committer` seam: the composition root (hato.boot) passes intake.notices' `KeyedCommitter`,
the same step as the SMTP session's and local submission's, so a notice to a user with an
imported key is stored only as ciphertext (docs/encryption.md); the default, `plain_commit`,
is the bare queue commit (tests and tools without keys).

Backscatter. A notice goes to the envelope sender, which anyone can forge; so a success notice
(NOTIFY=SUCCESS) is sent only when the sender is known to be who it says: the message was
submitted by an account of ours (or a local program), or its MAIL FROM passed SPF when we
received it (the queue parameters `AUTH_PARAM` and `SPF_PARAM`); otherwise the request is
ignored and logged. A failure notice about a copy one of our aliases forwarded (a recipient row
delivering to another domain than the RCPT TO named) returns the header section only, as with
RET=HDRS, unless the sender authenticated: whoever forged the sender gets no copy of the body.
Nor does any other failure notice to a sender that neither authenticated nor passed SPF
(since 2026-12-08: an address refused by the LMTP back end, or an alias target without an
account, bounced a stranger's whole body to whatever MAIL FROM it forged).

Signing. A notice carries the original (whole, up to RETURN_LIMIT, or its header section) as
the RFC 3464 report's third part, and the delay and success notices name what the sender
chose; so the committer is told whether the original was our own user's (`AUTH_PARAM`:
authenticated submission or local submission), and signs the notice with our domain's DKIM
key only then (intake/notices.py). A notice about mail from outside is not signed: RFC 6376
§8 (a signer vouches for what it signs) and anyone could otherwise have content of their
choosing returned to a forged sender under our signature.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol, assert_never

from hato.model import (
    Address,
    Clock,
    Delivered,
    Handoff,
    Notify,
    Outcome,
    PermFailed,
    QueuedMessage,
    QueuedRecipient,
    TempFailed,
    format_path,
    logfmt,
)
from hato.model.header import header_section
from hato.queue.body import BodyWriter
from hato.queue.dsn import (
    Action,
    Original,
    RecipientReport,
    build_dsn,
    is_international,
)
from hato.queue.protocol import QueueStore
from hato.queue.schedule import Schedule

log = logging.getLogger("hato.queue")

MIB = 1024 * 1024
# A failure DSN returns the whole original up to this size, else its header section (like
# Postfix's bounce_size_limit: a bounce must not be refused for its size).
RETURN_LIMIT = MIB
HEADERS_LIMIT = 256 * 1024  # octets of the original read to find its header section
READ_CHUNK = 64 * 1024
EXPIRED_STATUS = "4.4.7"  # RFC 3463 §3.5: delivery time expired (see schedule.expired_reply)
AUTH_PARAM = "hato.auth"  # queue parameter: the account (or "local") that submitted the message
SPF_PARAM = "hato.spf"  # queue parameter: "pass" when the MAIL FROM passed SPF on receipt

_WANTED = {
    Action.FAILED: Notify.FAILURE,
    Action.DELAYED: Notify.DELAY,
    Action.DELIVERED: Notify.SUCCESS,
    Action.RELAYED: Notify.SUCCESS,
}


def report_for(
    message: QueuedMessage,
    rcpt: QueuedRecipient,
    outcome: Outcome,
    *,
    now: float,
    gave_up: bool = False,
    warn_delay: bool = False,
) -> RecipientReport | None:
    """The report the sender asked for about this recipient's outcome, if any.

    `gave_up`: a TempFailed that ended the recipient (expired); `warn_delay`: a TempFailed
    deferral old enough for the delay warning (the caller sends at most one per message).
    """
    match outcome:
        case Delivered(handoff=Handoff.MAILBOX):
            report = RecipientReport(rcpt, Action.DELIVERED, last_attempt=now)  # RFC 3461 §5.2.3
        case Delivered(handoff=Handoff.RELAYED):
            report = RecipientReport(rcpt, Action.RELAYED, last_attempt=now)  # RFC 3461 §5.2.2
        case Delivered():
            return None  # RFC 3461 §5.2.1: the next hop got NOTIFY and reports from now on
        case PermFailed(reply=reply, remote_mta=remote):
            report = RecipientReport(rcpt, Action.FAILED, reply, remote, now)
        case TempFailed(reply=reply, remote_mta=remote) if gave_up:
            report = RecipientReport(rcpt, Action.FAILED, reply, remote, now, EXPIRED_STATUS)
        case TempFailed(reply=reply, remote_mta=remote) if warn_delay:
            report = RecipientReport(rcpt, Action.DELAYED, reply, remote, now)  # §5.2.5
        case TempFailed():
            return None
        case _:
            assert_never(outcome)
    if not rcpt.dsn.wants(_WANTED[report.action]):
        if report.action is Action.FAILED:
            log.info(logfmt("bounce-suppressed", id=message.queue_id, rcpt=f"<{rcpt.address}>",
                            reason="notify"))  # fmt: skip
        return None
    if message.mail_from is None:
        # RFC 5321 §4.5.5 / §6.1: never send a notification about a notification (or any
        # mail from the null reverse-path): there is nobody to send it to.
        if report.action is Action.FAILED:
            log.info(logfmt("bounce-suppressed", id=message.queue_id, rcpt=f"<{rcpt.address}>",
                            reason="null-sender"))  # fmt: skip
        return None
    if report.action in (Action.DELIVERED, Action.RELAYED) and not sender_verified(message):
        # RFC 3461 §4.1 leaves it to us; a success notice to a forged sender is backscatter.
        log.info(logfmt("dsn-success-ignored", id=message.queue_id, rcpt=f"<{rcpt.address}>",
                        sender=format_path(message.mail_from)))  # fmt: skip
        return None
    return report


def sender_verified(message: QueuedMessage) -> bool:
    """Whether the sender authenticated to us or passed SPF (see the module docstring)."""
    return AUTH_PARAM in message.params or message.params.get(SPF_PARAM) == "pass"


def submitted_here(message: QueuedMessage) -> bool:
    """Whether the message was our own user's: authenticated or local submission."""
    return AUTH_PARAM in message.params


def forwarded(rcpt: QueuedRecipient) -> bool:
    """Whether the row is an alias's copy for another domain than the one addressed."""
    return rcpt.address.domain.lower() != rcpt.original.domain.lower()


def read_original(message: QueuedMessage, *, full: bool) -> Original:
    """The original as the DSN returns it: prefix and body, or only the header section.

    Blocking when the body is a file: run it in a thread.
    """
    if message.body is not None:
        data = message.prefix + message.body
        return Original(data, False) if full else Original(header_section(data), True)
    with open(message.body_path, "rb") as f:
        if full:
            return Original(message.prefix + f.read(), False)
        buf = bytearray(message.prefix)
        while b"\r\n\r\n" not in buf and len(buf) < HEADERS_LIMIT:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            buf += chunk
    return Original(header_section(bytes(buf[:HEADERS_LIMIT])), True)


class Committer(Protocol):
    """Queues `data`, a message made here (a DSN), from `<>` to `recipients`; `body` is the
    empty body reserved for it (its queue id is named inside `data`). `ours`: the original
    was our own user's (see "Signing" in the module docstring). Returns the queue id(s).
    Raises QueueWriteError when nothing was queued."""

    async def __call__(
        self,
        body: BodyWriter,
        data: bytes,
        *,
        recipients: list[tuple[Address, Address]],
        params: dict[str, str | None],
        ours: bool,
    ) -> str: ...


class PlainCommit:
    """The bare queue commit: `data` written into `body` as it is."""

    def __init__(self, queue: QueueStore) -> None:
        self._queue = queue

    async def __call__(
        self,
        body: BodyWriter,
        data: bytes,
        *,
        recipients: list[tuple[Address, Address]],
        params: dict[str, str | None],
        ours: bool,
    ) -> str:
        body.write(data)
        return await self._queue.commit(
            body, mail_from=None, recipients=recipients, prefix=b"", params=params
        )


class Notifier:
    """Builds and queues the DSN of one attempt (see the module docstring)."""

    def __init__(
        self,
        queue: QueueStore,
        *,
        hostname: str,
        clock: Clock,
        schedule: Schedule,
        committer: Committer | None = None,
    ) -> None:
        self._queue = queue
        self._commit: Committer = committer if committer is not None else PlainCommit(queue)
        self._hostname = hostname
        self._clock = clock
        self._schedule = schedule

    def returns_full(self, message: QueuedMessage, reports: Sequence[RecipientReport]) -> bool:
        # RFC 3461 §4.3: the whole message only in a DSN that reports a failure, and never
        # with RET=HDRS; a large original comes back as its header section (RETURN_LIMIT).
        if not any(r.action is Action.FAILED for r in reports):
            return False
        if (message.params.get("RET") or "").upper() == "HDRS":
            return False
        if AUTH_PARAM not in message.params and any(
            r.action is Action.FAILED and forwarded(r.recipient) for r in reports
        ):
            return False  # forwarded mail: no body to a sender we could not check
        if not sender_verified(message):
            # RFC 3461 §4.3 leaves the content to us (RFC 3464 §2: the third part is optional).
            # A sender that neither authenticated nor passed SPF may be anyone's forged
            # address: a failure after our 250 (an LMTP back end refusing an address, an alias
            # target without an account, expiry) must not carry a stranger's body to it.
            return False
        return len(message.prefix) + message.size <= RETURN_LIMIT

    async def send(self, message: QueuedMessage, reports: Sequence[RecipientReport]) -> str:
        """Queue the DSN about `reports` to the message's sender; returns the DSN's queue id.

        Raises QueueWriteError (nothing queued) or OSError (the original could not be read).
        """
        sender = message.mail_from
        if sender is None or not reports:
            raise ValueError("a DSN needs a sender and at least one report")
        # RFC 8689 §5: a report about a REQUIRETLS message is redacted: none of the message
        # (not even its header section, whatever RET asked) comes back, so the report itself
        # needs no REQUIRETLS and reaches the sender by any path.
        redacted = "REQUIRETLS" in message.params
        full = not redacted and self.returns_full(message, reports)
        original: Original | None = None
        if not redacted and message.body is None:
            original = await asyncio.to_thread(read_original, message, full=full)
        elif not redacted:
            original = read_original(message, full=full)
        body = self._queue.new_body()
        data = build_dsn(
            message,
            reports,
            original,
            hostname=self._hostname,
            now=self._clock.now(),
            dsn_id=body.queue_id,
            expires_at=message.received_at + self._schedule.max_lifetime,
        )
        params: dict[str, str | None] = {}
        if not data.isascii():
            params["BODY"] = "8BITMIME"  # RFC 6152 §2: the returned original has 8-bit octets
        if is_international(message, reports):
            # RFC 6531 §3.4 / RFC 6533 §6: UTF-8 headers or addresses inside (the
            # message/global-delivery-status of a non-ASCII recipient, too).
            params["SMTPUTF8"] = None
        # RFC 3461 §6.1 / RFC 5321 §4.5.5: a DSN goes from the null reverse-path.
        # Signed only when the original was our user's ("Signing", module docstring).
        queue_id = await self._commit(
            body, data, recipients=[(sender, sender)], params=params, ours=submitted_here(message)
        )
        log.info(
            logfmt(
                "dsn-queued",
                id=message.queue_id,
                dsn=queue_id,
                to=format_path(sender),
                action=",".join(sorted({r.action.value for r in reports})),
                nrcpt=len(reports),
                returned="none" if original is None else "full" if full else "headers",
            )
        )
        return queue_id
