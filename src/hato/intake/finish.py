"""The end-of-message steps of the pipeline, for every door (DESIGN.md "One way in"): between
the end of the message and its commit (message.py).

Theory of operation. Which steps a message takes is decided in one place, `steps`, from its
door (`Door`) and what the door's context has configured:

- mail a client sends us without AUTH (`Door.MX`) gets the authentication checks of mail we
  receive (SPF, DKIM, ARC, DMARC and Authentication-Results, RFC 8601: inbound.py, on mx
  listeners), and, last, an ARC seal when our aliases forward it (RFC 8617);
- mail our users send (`Door.SUBMISSION` after AUTH, `Door.LOCAL` from hato-sendmail and the
  maildrop) gets the DKIM signature of its author's domain (RFC 6376: signing.py);
- the server's own notices about our users' mail (`Door.NOTICE`, DSNs from
  MAILER-DAEMON@hostname about mail that carried AUTH_PARAM) get the signature of the
  hostname's domain, or of the nearest of our signing domains above it (relaxed DMARC
  alignment, RFC 7489 §3.1.1), so that DMARC passes at the receiver; notices about mail from
  outside (`Door.OUTSIDE_NOTICE`) are not signed: they return content a stranger chose, and a
  signature vouches for it (RFC 6376 §8; queue/bounce.py "Signing");
- then, with our results known, rspamd's verdict (spamcheck.py) and the milters'
  (miltercheck.py), for every door but the notices, as the door's role has them configured.

The order: the checks first (they judge the message as it came); then rspamd and the
milters, which may add, change and delete header fields and replace the body; the DKIM
signature and the ARC seal last, over the message as it leaves (our header lines on top of
what the milters left), so that no edit comes after them: in Postfix the signer (OpenDKIM,
OpenARC) is the last milter, for the same reason (RFC 6376 §5; RFC 8617 §5.1, a sealer makes
its changes before it seals).

The results are header lines for the stored prefix (a stored body is never rewritten; an
edit is a new body), queue parameters, or the refusal a DMARC policy, rspamd or a milter asks
for. `end_of_message` runs the steps and then the commit: the one function the SMTP session,
local submission and the DSN door call.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hato.authcheck.dkim import pieces
from hato.authcheck.offload import NEARBY_LIMIT
from hato.crypto.scratch import SealedScratch
from hato.delivery.maildir import FOLDER_PARAM
from hato.filters import Envelope
from hato.intake.capture import LargeMessage, MessageCapture
from hato.intake.context import IntakeContext
from hato.intake.inbound import InboundVerdict
from hato.intake.message import commit
from hato.intake.miltercheck import DISCARDED, milter_check
from hato.intake.milterenvelope import apply_envelope
from hato.intake.signing import split_message
from hato.intake.spamcheck import Spooled, read_back, rewritten, spam_check
from hato.intake.transaction import Transaction
from hato.milter import Command
from hato.milter import Transaction as MilterTransaction
from hato.model import Address, RecipientDsn, Reply, ReversePath, logfmt
from hato.model.address import format_path
from hato.model.frozen import quick_init
from hato.queue import AUTH_PARAM, HOLD_PARAM, SPF_PARAM, BodyWriter

log = logging.getLogger("hato.smtpd")

QUARANTINE_PARAM = FOLDER_PARAM  # DMARC quarantine: the user's Junk folder


class Door(enum.Enum):
    """How a message came in (see the module docstring)."""

    MX = "mx"  # a client without AUTH, on any SMTP listener
    SUBMISSION = "submission"  # a client after AUTH
    LOCAL = "local"  # hato-sendmail on the submit socket, the maildrop
    NOTICE = "notice"  # the server's own DSNs about our users' mail
    OUTSIDE_NOTICE = "outside-notice"  # the server's own DSNs about mail from outside


NOTICES = (Door.NOTICE, Door.OUTSIDE_NOTICE)
SIGNED = (Door.SUBMISSION, Door.LOCAL, Door.NOTICE)  # never content a stranger chose


@quick_init
@dataclass(frozen=True, slots=True)
class Submitted:
    """The facts of the transaction the checks need."""

    session: str
    client_ip: str  # "" for a door without a client (local, notice)
    helo: str
    user: Address | None  # the authenticated account, or None
    mail_from: ReversePath
    params: dict[str, str | None]
    door: Door = Door.MX


@dataclass(frozen=True, slots=True)
class Steps:
    """The end-of-message steps a message takes."""

    check: bool  # SPF, DKIM, ARC, DMARC (and the ARC seal when an alias forwards it)
    sign: bool  # our DKIM signature
    spam: bool  # rspamd
    milters: bool


# Every plan there is, made once: a frozen dataclass costs a call per field to make, and a
# message asked for its plan three times (issue 15: ~2 us each on the loop, now a look-up).
_PLANS = {
    (check, sign, spam, milters): Steps(check, sign, spam, milters)
    for check in (False, True)
    for sign in (False, True)
    for spam in (False, True)
    for milters in (False, True)
}
NO_STEPS = _PLANS[(False, False, False, False)]


def steps(ctx: IntakeContext, door: Door) -> Steps:
    """The one place that decides which steps a door's message takes (module docstring)."""
    judged = door not in NOTICES  # our own notices are not shown to rspamd or milters
    return _PLANS[
        (
            door is Door.MX and ctx.inbound is not None,
            door in SIGNED and bool(ctx.signer),
            judged and ctx.spam is not None,
            judged and bool(ctx.milters),
        )
    ]


def open_capture(ctx: IntakeContext, door: Door) -> MessageCapture | None:
    """What the door keeps for `authenticate` while the message comes: for the signer the
    message whole (or nothing past MAX_CHECKED_SIZE), for the inbound checks the message whole
    or, past it, its header section and the body hashes of its DKIM signatures (capture.py)."""
    plan = steps(ctx, door)
    if plan.sign:
        return MessageCapture(None)
    return MessageCapture(ctx.inbound.lanes) if plan.check and ctx.inbound is not None else None


async def end_of_message(
    ctx: IntakeContext,
    tx: Transaction,
    body: Spooled,
    facts: Submitted,
    *,
    captured: bytes | LargeMessage | None,
    trace: Callable[[str], bytes],
    direct: bool = True,
) -> list[str] | Reply:
    """The end-of-message steps of `facts.door`, then the commit (message.py): the queue ids,
    or the reply instead of 250 (DISCARDED, a 250, when a milter discarded the message: nothing
    is stored). Raises QueueWriteError as `commit` does."""
    if steps(ctx, facts.door) is NO_STEPS:
        # Nothing to check, sign or ask (the engine's own path): the commit straight away,
        # without the coroutines of `finish` (issue 15: per message on the loop).
        added, params, sender = b"", queue_params(facts), facts.mail_from
    else:
        added, params, refusal, body, sender = await finish(
            ctx,
            facts,
            captured,
            tx.recipients,  # a milter may change them, in place
            body,  # rspamd may have its header edited: a copy comes back
            tx.dsn,  # a milter's added recipients' NOTIFY/ORCPT (SMFIR_ADDRCPT_PAR)
        )
        if refusal is not None:
            body.discard()
            return refusal
    return await commit(ctx, tx, body, mail_from=sender, added=added, params=params,
                        trace=trace, session=facts.session, direct=direct)  # fmt: skip


async def finish(
    ctx: IntakeContext,
    facts: Submitted,
    captured: bytes | LargeMessage | None,
    recipients: list[tuple[Address, Address]],
    body: Spooled,
    dsn: dict[Address, RecipientDsn] | None = None,
) -> tuple[bytes, dict[str, str | None], Reply | None, Spooled, ReversePath]:
    """(header lines to prepend, queue params, refusal or None, the message to queue: `body`
    or, when rspamd or a milter asked for changes, its edited copy, and the sender to queue
    it with: MAIL FROM's, or a milter's SMFIR_CHGFROM). A milter's recipient changes are made
    to `recipients` and (their RFC 3461 requests) `dsn` in place."""
    original = body
    added, params, refusal, verdict = await authenticate(ctx, facts, captured)
    if refusal is not None:
        return added, params, refusal, body, facts.mail_from
    plan = steps(ctx, facts.door)
    sender = facts.mail_from
    if plan.spam:
        added, refusal, body = await rspamd_step(ctx, facts, recipients, added, params, body)
        if refusal is not None:
            return added, params, refusal, body, sender
    if plan.milters:
        milted = await milter_check(
            ctx.milters,
            milter_transaction(ctx, facts, recipients, queue_id(facts, body)),
            queue_id(facts, body),
            added,
            body,
            lambda: new_spooled(ctx, body),
            ctx.settings.max_message_size,  # a milter's new body: no bigger than a message
        )
        if milted.hold:
            params[HOLD_PARAM] = "milter"  # committed held (queue/store.py)
        added, refusal, body = milted.prefix, milted.refusal, milted.body
        if milted.envelope and refusal is None:
            # In place: the caller queues for `recipients` after this (milterenvelope.py).
            sealed = isinstance(body, SealedScratch)
            sender = apply_envelope(
                ctx, recipients, milted.envelope, queue_id(facts, body), sender, params,
                sealed=sealed, dsn=dsn,
            )  # fmt: skip
            if not recipients:
                return added, params, DISCARDED, body, sender  # all deleted
        if refusal is not None:
            return added, params, refusal, body, sender
    # Last, after every step that may change the header or the body (rspamd's, the milters'),
    # as OpenDKIM and OpenARC are the last milters in Postfix: a DKIM signature (RFC 6376 §5)
    # and an ARC set (RFC 8617 §5.1: the sealer's changes come before its seal) cover the
    # message as it leaves; an edit after them would break them at the next hop. The signing
    # domain is that of the From they leave (signing.py OutboundSigner), not the one received.
    unchanged = captured if body is original and isinstance(captured, bytes) else None
    if plan.sign:
        added = await sign(ctx, facts, captured, added, body, unchanged, sender) + added
    elif verdict is not None and isinstance(captured, bytes):
        # Past MAX_CHECKED_SIZE no chain was verified: no seal (RFC 8617 §5.1 seals what we
        # verified; docs/configuration.md).
        added = await arc_seal(ctx, verdict, added, body, unchanged, recipients) + added
    return added, params, None, body, sender


def queue_id(facts: Submitted, body: Spooled) -> str:
    return body.queue_id if isinstance(body, BodyWriter) else facts.session


def milter_transaction(
    ctx: IntakeContext,
    facts: Submitted,
    recipients: list[tuple[Address, Address]],
    queue_id: str,
) -> MilterTransaction:
    """What the milters are told, with the macros Postfix gives them (its milter_*_macros
    defaults: {j} our name, {i} the queue id, {auth_authen} the SASL login, ...)."""
    client = f"[{facts.client_ip}]" if facts.client_ip else "localhost"
    mail_from = format_path(facts.mail_from)
    common = {"j": ctx.settings.hostname, "{daemon_name}": "hato", "v": "Hato"}
    mail = {"i": queue_id, "{mail_addr}": mail_from.strip("<>")}
    if facts.user is not None:
        mail |= {"{auth_type}": "PLAIN", "{auth_authen}": str(facts.user)}
    return MilterTransaction(
        client_name=client,
        client_ip=facts.client_ip,
        client_port=0,
        helo=facts.helo,
        mail_from=mail_from,
        mail_args=tuple(k if v is None else f"{k}={v}" for k, v in facts.params.items()),
        recipients=tuple(f"<{original}>" for _, original in recipients),
        macros={
            Command.CONNECT: common
            | {
                "_": f"{client} [{facts.client_ip}]",
                "{client_addr}": facts.client_ip,
                "{client_name}": client,
            },
            Command.HELO: {},
            Command.MAIL: mail,
            Command.DATA: {"i": queue_id},
            Command.EOH: {"i": queue_id},
            Command.BODYEOB: {"i": queue_id},
        },
    )


def new_spooled(ctx: IntakeContext, body: Spooled) -> Spooled:
    """An empty body of the same kind as `body` (a keyed message stays encrypted)."""
    return (
        ctx.queue.new_body()
        if isinstance(body, BodyWriter)
        else SealedScratch(ctx.queue.messages_dir)
    )


async def rspamd_step(
    ctx: IntakeContext,
    facts: Submitted,
    recipients: list[tuple[Address, Address]],
    added: bytes,
    params: dict[str, str | None],
    body: Spooled,
) -> tuple[bytes, Reply | None, Spooled]:
    """Rspamd's verdict (spamcheck.py): (header lines to prepend, refusal or None, body)."""
    assert ctx.spam is not None
    envelope = Envelope(
        mail_from=format_path(facts.mail_from),
        recipients=tuple(str(original) for _, original in recipients),
        client_ip=facts.client_ip,
        helo=facts.helo,
        user=str(facts.user) if facts.user is not None else None,
        queue_id=queue_id(facts, body),
    )
    verdict = await spam_check(ctx.spam, ctx.role, envelope, added, body)
    if verdict.refusal is not None:
        return added, verdict.refusal, body
    if verdict.junk:
        params[QUARANTINE_PARAM] = "Junk"
    if verdict.edits_header:
        body = await rewritten(body, verdict, lambda: new_spooled(ctx, body))  # same kind
    return verdict.header + added, None, body


def queue_params(facts: Submitted) -> dict[str, str | None]:
    """The queue parameters of the message: MAIL FROM's, and after AUTH the user's."""
    params = facts.params
    if facts.door is Door.SUBMISSION and facts.user is not None:
        params[AUTH_PARAM] = str(facts.user)  # a checked sender (queue/bounce.py)
    return params


async def authenticate(
    ctx: IntakeContext,
    facts: Submitted,
    captured: bytes | LargeMessage | None,
) -> tuple[bytes, dict[str, str | None], Reply | None, InboundVerdict | None]:
    """(header lines to prepend, queue params, refusal or None, the checks' verdict for the
    ARC seal, `arc_seal`, or None when the door has no checks)."""
    params = queue_params(facts)
    plan = steps(ctx, facts.door)
    checker = ctx.inbound
    if not plan.check or checker is None:
        return b"", params, None, None
    if captured is None:
        # Only a header section past MAX_CHECKED_SIZE, refused (552 5.3.4) before this.
        log.warning(logfmt("authcheck-skipped", session=facts.session, reason="no header end"))
        return b"", params, None, None
    verdict = await checker.check(
        client_ip=facts.client_ip, helo=facts.helo, mail_from=facts.mail_from, message=captured
    )
    log.info(
        logfmt(
            "authcheck",
            session=facts.session,
            client=facts.client_ip,
            result=verdict.summary,
            quarantine=verdict.quarantine or None,
            refuse=verdict.refuse.code if verdict.refuse else None,
        )
    )
    if verdict.quarantine:
        params[QUARANTINE_PARAM] = "Junk"
    if verdict.spf_pass:
        params[SPF_PARAM] = "pass"  # a checked sender: success DSNs may go to it
    return verdict.header, params, verdict.refuse, verdict


async def sign(
    ctx: IntakeContext,
    facts: Submitted,
    captured: bytes | LargeMessage | None,
    prefix: bytes,
    body: Spooled,
    unchanged: bytes | None,
    sender: ReversePath,
) -> bytes:
    """Our DKIM-Signature (RFC 6376) of the message as it leaves (`over_message`), by the
    first domain we hold a key for among the From addresses of its header section as it
    leaves (after every edit of rspamd's and the milters'), then the envelope `sender`'s; a
    notice's by its hostname's domain or the nearest signing domain above it (RFC 7489
    §3.1.1 relaxed alignment)."""
    signer = ctx.signer
    assert signer is not None
    if not isinstance(captured, bytes):
        log.warning(logfmt("dkim-sign-skipped", session=facts.session, reason="message too large"))
        return b""
    parents = facts.door is Door.NOTICE
    return await over_message(
        lambda head, rest: signer.sign_parts(head, rest, sender=sender, parents=parents),
        prefix,
        body,
        unchanged,
    )


async def over_message(
    work: Callable[[bytes, Iterable[bytes]], bytes],
    prefix: bytes,
    body: Spooled,
    unchanged: bytes | None,
    *,
    nearby: bool = True,
) -> bytes:
    """`work(header section, body pieces)` over the message as it leaves: `prefix` (our
    header lines), then `unchanged` (the message as it came, already in memory) or, when a
    step changed it, `body` (read back and hashed as it is read, in a worker thread)."""
    if unchanged is None and not (isinstance(body, BodyWriter) and body.inline):
        chunks = read_back(body)
        return await asyncio.to_thread(lambda: work(*split_message(prefix, chunks)))
    if unchanged is None:
        assert isinstance(body, BodyWriter)
        unchanged = body.peek_inline()
    # RFC 5322 §2.1: the header section ends at the first empty line (maybe the first).
    end = -2 if unchanged.startswith(b"\r\n") else unchanged.find(b"\r\n\r\n")
    head = prefix + (unchanged if end == -1 else unchanged[: end + 2])
    rest = pieces(b"" if end == -1 else unchanged[end + 4 :])
    if nearby and len(unchanged) <= NEARBY_LIMIT:
        # A small message is signed where it is (authcheck/offload.py NEARBY_LIMIT): under a
        # millisecond, most of it the RSA signature, during which `cryptography` holds the
        # GIL, so in a thread the loop waited for it all the same, plus the hand-off there
        # and back (the out benchmark: a thread wake-up and a loop wake-up per message).
        return work(head, rest)
    # Hashing a body of up to 10 MiB takes seconds of CPU: not on the event loop.
    return await asyncio.to_thread(lambda: work(head, rest))


async def arc_seal(
    ctx: IntakeContext,
    verdict: InboundVerdict,
    prefix: bytes,
    body: Spooled,
    unchanged: bytes | None,
    recipients: list[tuple[Address, Address]],
) -> bytes:
    """RFC 8617 §5.1: when an alias of ours forwards the message to another domain, we add an
    ARC set, so the next hop can see what we saw (SPF and DKIM break on forwarding), over
    the message as it leaves (`over_message`: our header lines, the Authentication-Results
    among them, on top). The seal hashes the body: in a worker thread, not on the event
    loop."""
    if verdict.refuse is not None or not ctx.sealers:
        return b""
    sealers = (
        ctx.sealers.get(original.domain.lower())
        for dest, original in recipients
        if not ctx.resolver.is_local_domain(dest.domain)
    )
    sealer = next((s for s in sealers if s is not None), None)
    if sealer is None:
        return b""
    chain = verdict.arc
    return await over_message(
        lambda head, rest: sealer.seal(head, rest, chain) or b"",
        prefix,
        body,
        unchanged,
        nearby=False,
    )
