"""The milters' word before DATA (Postfix's smtpd_milters at the connect, HELO, MAIL and
RCPT stages), and greylisting at RCPT TO (server/screen.py): the checks that need a wait.

Theory of operation. Each milter of the listener whose last negotiation said it answers an
envelope step (or that was not asked yet) is told, on a connection of its own, the client,
HELO name, MAIL FROM and (at RCPT) this recipient, each with its macros ({rcpt_addr} for
the recipient); the transaction is then aborted (SMFIC_ABORT, SMFIC_QUIT). Before the
greeting, each milter that answers the connect step (as its last negotiation said; every one
until it has been asked once) is told the connection alone (SMFIC_CONNECT): a reject or a
5xx of its own is the greeting `554 5.7.1` (RFC 5321 §3.1: the server then answers 503 to
every command but QUIT), a tempfail or a 4xx the greeting `421 4.7.0` and the connection
closed (RFC 5321 §3.8), as Postfix greets on a milter's connect refusal (src/smtpd/smtpd.c,
smtpd_proto). At MAIL FROM a reject, tempfail or reply code of its own at the connect, HELO
or MAIL step refuses MAIL FROM, as Postfix does: it answers a milter's MAIL refusal at once
(smtpd_delay_reject does not apply to milters), and a HELO refusal "persists so it will apply
to MAIL FROM" (src/smtpd/smtpd.c, helo_cmd). At
RCPT TO a refusal refuses this recipient only, so the client learns early and the recipient
never enters the message; the others go on. The whole message is shown to every milter
again at the end of DATA (finish.py), where its modifications apply. A milter that cannot be
asked here is passed over: its default_action applies at the end of DATA, once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from hato.intake.finish import Submitted, milter_transaction
from hato.intake.miltercheck import custom_reply
from hato.intake.miltermetrics import Stage
from hato.milter import Command, MilterUnavailable, Transaction
from hato.milter.protocol import Reject as MilterReject
from hato.milter.protocol import ReplyCode, Tempfail
from hato.model import Address, Reply, logfmt
from hato.policy import Accept, Decision, Defer, Reject
from hato.server.context import SessionContext
from hato.server.screen import Screened

log = logging.getLogger("hato.smtpd")

# RFC 5321 §4.2.2 550 / 450; RFC 3463 §3.8 X.7.1: delivery not authorized.
RCPT_REJECTED = Reply(550, "5.7.1", "Recipient refused by content filter")
RCPT_DEFERRED = Reply(450, "4.7.1", "Recipient deferred by content filter, try again later")
# RFC 5321 §3.1: a 554 greeting refuses the session; §3.8: a 421 greeting closes it. RFC
# 3463 §3.8 X.7.1 delivery not authorized; X.7.0 other security or policy status.
CONNECT_REJECTED = Reply(554, "5.7.1", "Connection refused by content filter, no SMTP service here")
CONNECT_DEFERRED = Reply(421, "4.7.0", "Connection deferred by content filter, try again later")
# RFC 5321 §4.3.2: MAIL FROM may be answered 550 or 451; RFC 3463 §3.8 X.7.1.
MAIL_REJECTED = Reply(550, "5.7.1", "Sender refused by content filter")
MAIL_DEFERRED = Reply(451, "4.7.1", "Sender deferred by content filter, try again later")


def wanted(ctx: SessionContext) -> bool:
    """Whether any milter of the listener may answer before DATA."""
    return any(m.client.wants_envelope for m in ctx.milters)


def connect_checked(ctx: SessionContext) -> bool:
    """Whether the greeting waits for the milters' word on the connection."""
    return any(m.client.wants_connect for m in ctx.milters)


async def milter_connect(ctx: SessionContext, session: str, client_ip: str) -> Reply | None:
    """The greeting of the first milter that refuses the connection (554 or 421), or None."""
    facts = Submitted(session, client_ip, "", None, None, {})
    tx = milter_transaction(ctx, facts, [], session)
    refused = await _first_refusal(
        ctx, tx, session, "connect", CONNECT_REJECTED, CONNECT_DEFERRED, connect_only=True
    )
    if refused is None:
        return None
    reply, milter = refused
    if reply.code >= 500 and reply.code != 554:
        # RFC 5321 §3.1: the one refusing greeting is 554; the milter's text is kept.
        reply = Reply(554, reply.enhanced or "5.7.1", reply.text)
    elif 400 <= reply.code < 500 and reply.code != 421:
        reply = Reply(421, reply.enhanced or "4.7.0", reply.text)  # RFC 5321 §3.8
    log.info(logfmt("milter-connect-refused", session=session, milter=milter, client=client_ip,
                    reply=reply.code))  # fmt: skip
    return reply


def mail_checked(ctx: SessionContext) -> bool:
    """Whether MAIL FROM waits for the milters' word."""
    return wanted(ctx)


async def milter_mail(ctx: SessionContext, facts: Submitted) -> Decision:
    """MAIL FROM refused by the first milter that refuses the connect, HELO or MAIL step."""
    tx = milter_transaction(ctx, facts, [], facts.session)
    refused = await _first_refusal(ctx, tx, facts.session, "mail", MAIL_REJECTED, MAIL_DEFERRED)
    if refused is None:
        return Accept()
    reply, milter = refused
    log.info(logfmt("milter-mail-refused", session=facts.session, milter=milter,
                    sender=f"<{facts.mail_from or ''}>", reply=reply.code))  # fmt: skip
    return Reject(reply) if reply.code >= 500 else Defer(reply)


def rcpt_checked(ctx: SessionContext) -> bool:
    """Whether a recipient waits for a check at RCPT TO (greylisting or a milter)."""
    greylist = ctx.screen is not None and ctx.screen.rules.greylist is not None
    return greylist or wanted(ctx)


async def recipient_checks(
    ctx: SessionContext, screened: Screened, facts: Submitted, recipient: Address
) -> Reply | None:
    """RFC 6647 greylisting (server/screen.py), then the milters: the first refusal."""
    reply = None
    if ctx.screen is not None and ctx.screen.rules.greylist is not None:
        reply = await ctx.screen.greylist(
            screened, facts.client_ip, facts.helo, facts.mail_from, recipient, facts.session
        )
    if reply is None and wanted(ctx):
        reply = await milter_rcpt(ctx, facts, recipient)
    return reply


async def milter_rcpt(ctx: SessionContext, facts: Submitted, recipient: Address) -> Reply | None:
    """The refusal of `recipient` by the first milter that refuses it, or None."""
    tx = milter_transaction(ctx, facts, [(recipient, recipient)], facts.session)
    tx = replace(tx, macros={**tx.macros, Command.RCPT: {"{rcpt_addr}": str(recipient)}})
    refused = await _first_refusal(ctx, tx, facts.session, "rcpt", RCPT_REJECTED, RCPT_DEFERRED)
    if refused is None:
        return None
    reply, milter = refused
    log.info(logfmt("milter-rcpt-refused", session=facts.session, milter=milter,
                    recipient=recipient, reply=reply.code))  # fmt: skip
    return reply


async def _first_refusal(
    ctx: SessionContext,
    tx: Transaction,
    session: str,
    stage: str,
    rejected: Reply,
    deferred: Reply,
    *,
    connect_only: bool = False,
) -> tuple[Reply, str] | None:
    """The first milter's refusal of `tx`'s envelope (or of its connection alone), and that
    milter's address."""
    for milter in ctx.milters:
        client = milter.client
        if not (client.wants_connect if connect_only else client.wants_envelope):
            continue
        address, metrics = client.address, milter.metrics
        started = time.monotonic()
        try:
            final = await (client.probe_connect(tx) if connect_only else client.probe(tx))
        except MilterUnavailable as exc:
            seconds = time.monotonic() - started
            metrics.unavailable(address, Stage.ENVELOPE, exc, "skipped", seconds)
            log.info(logfmt("milter-unavailable", session=session, milter=address, error=exc,
                            stage=stage))  # fmt: skip
            continue
        reply = type(final).__name__.lower() if final is not None else "continue"
        seconds = time.monotonic() - started
        metrics.answered(address, Stage.ENVELOPE, reply, seconds)
        match final:
            case MilterReject():
                return rejected, address
            case Tempfail():
                return deferred, address
            case ReplyCode(code=code, text=text):
                return custom_reply(code, text), address
            case _:
                continue  # continue, accept, discard (asked again at the end of DATA)
    return None
