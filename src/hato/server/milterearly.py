"""The checks of a recipient at RCPT TO that need a wait: greylisting (server/screen.py) and
the milters' word, before DATA (Postfix's smtpd_milters at the
connect, HELO, MAIL and RCPT stages).

Theory of operation. Each milter of the listener whose last negotiation said it answers an
envelope step (or that was not asked yet) is told, on a connection of its own, the client,
HELO name, MAIL FROM and this recipient, each with its macros ({rcpt_addr} for the
recipient); the transaction is then aborted (SMFIC_ABORT, SMFIC_QUIT). A reject, tempfail
or reply code of its own at any of these steps refuses this recipient (the reply to RCPT
TO), so the client learns early and the recipient never enters the message; the others go
on. The whole message is shown to every milter again at the end of DATA (finish.py), where
its modifications apply. A milter that cannot be asked here is passed over: its
default_action applies at the end of DATA, once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from hato.milter import Command, MilterUnavailable
from hato.milter.protocol import Reject, ReplyCode, Tempfail
from hato.model import Address, Reply, logfmt
from hato.server.context import SessionContext
from hato.server.finish import Submitted, milter_transaction
from hato.server.miltercheck import custom_reply
from hato.server.screen import Screened

log = logging.getLogger("hato.smtpd")

# RFC 5321 §4.2.2 550 / 450; RFC 3463 §3.8 X.7.1: delivery not authorized.
RCPT_REJECTED = Reply(550, "5.7.1", "Recipient refused by content filter")
RCPT_DEFERRED = Reply(450, "4.7.1", "Recipient deferred by content filter, try again later")


def wanted(ctx: SessionContext) -> bool:
    """Whether any milter of the listener may answer before DATA."""
    return any(m.client.wants_envelope for m in ctx.milters)


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
    for milter in ctx.milters:
        if not milter.client.wants_envelope:
            continue
        try:
            final = await milter.client.probe(tx)
        except MilterUnavailable as exc:
            log.info(logfmt("milter-unavailable", session=facts.session,
                            milter=milter.client.address, error=exc, stage="rcpt"))  # fmt: skip
            continue
        match final:
            case Reject():
                reply = RCPT_REJECTED
            case Tempfail():
                reply = RCPT_DEFERRED
            case ReplyCode(code=code, text=text):
                reply = custom_reply(code, text)
            case _:
                continue  # continue, accept, discard (asked again at the end of DATA)
        log.info(logfmt("milter-rcpt-refused", session=facts.session,
                        milter=milter.client.address, recipient=recipient,
                        reply=reply.code))  # fmt: skip
        return reply
    return None
