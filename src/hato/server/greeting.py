"""What a session does between accept() and its greeting: the OP25B network rules
(hato.policy.networks), then the mx screen (server/screen.py), then the milters' word on the
connection (server/milterearly.py)."""

from __future__ import annotations

from collections.abc import Callable

from hato.model import Reply
from hato.server.context import SessionContext
from hato.server.milterearly import connect_checked, milter_connect
from hato.server.screen import Screened, network_refusal


def screens(ctx: SessionContext) -> bool:
    """Whether a session of `ctx` has anything to do before its greeting."""
    rules = ctx.network_rules
    networks = bool(rules.refuse or rules.allow) and ctx.dns is not None
    return ctx.screen is not None or networks or connect_checked(ctx)


async def before_greeting(
    ctx: SessionContext, ip: str, session: str, write: Callable[[bytes], bool]
) -> Reply | Screened | None:
    """The OP25B network rules, then the mx screen, then the milters: the reply to greet with
    instead of 220, Screened (what the screen found), or None (greet as usual)."""
    rules, dns = ctx.network_rules, ctx.dns
    if (rules.refuse or rules.allow) and dns is not None:
        refusal = await network_refusal(ip, ctx.listener.name, rules, ctx.networks, dns, session)
        if refusal is not None:
            return refusal
    screened = None
    if ctx.screen is not None:
        screened = await ctx.screen.before_greeting(ip, session, write)
        if isinstance(screened, Reply):
            return screened
    if connect_checked(ctx):
        refusal = await milter_connect(ctx, session, ip)
        if refusal is not None:
            return refusal
    return screened
