"""The MAIL and RCPT steps of the pipeline, whatever the door (the SMTP session, local
submission, the server's own notices).

Theory of operation. MAIL takes two steps: `sender_refusal` judges the sender (RFC 5321 §3.3:
relay control and the binding of an authenticated user to the addresses it owns,
hato.policy.relay), then `open_transaction` reserves the message under the user's sending
limits. Each recipient takes two steps too: `resolve_recipient` (the RFC 5321 §4.5.1
postmaster rewrite, the address book, relay control), then `add_recipient` (the key verdict
of encryption at rest, intake/protect.py, then the recipient's sending-limit reservation,
then its rows in the `Transaction`). A network session runs its checks that wait (milters,
greylisting: server/milterearly.py) between the two steps of each; the other doors call
`begin` and `recipient`, both steps at once. Nothing here waits or does I/O but the limiter's
SQLite step, so a recipient costs no task switch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

from hato.crypto import DEFER_REPLY
from hato.directory.resolver import Local, NotLocal, Resolution
from hato.intake.context import IntakeContext
from hato.intake.protect import recipient_keys
from hato.intake.transaction import Transaction
from hato.model import (
    Address,
    AddressError,
    RecipientDsn,
    Reply,
    ReversePath,
    logfmt,
    xtext_decode,
)
from hato.model.storeerror import StoreUnavailable
from hato.policy import (
    Accept,
    RecipientFacts,
    Reservation,
    SenderFacts,
    mail_from_decision,
    rcpt_decision,
)

log = logging.getLogger("hato.smtpd")


def owns(ctx: IntakeContext, user: Address, address: Address) -> bool:
    """Whether `user` may send as `address`: its own, its +tags and aliases, or a grant."""
    if ctx.resolver.owns(user, address):
        return True
    grants = ctx.send_as.get(Address(user.local.lower(), user.domain.lower()), ())
    return Address(address.local.lower(), address.domain.lower()) in grants


def trusted_params(
    ctx: IntakeContext, params: Mapping[str, str | None], *, user: Address | None
) -> Mapping[str, str | None]:
    """MAIL's parameters as the pipeline keeps them (for the milters, the queue): an AUTH=
    mailbox the user does not own is replaced by <>. RFC 4954 §5: a server that does not trust
    the authenticated client to name that original submitter "MUST behave as if the AUTH=<>
    parameter was supplied"; we trust a user to name only an address of its own."""
    value = params.get("AUTH")
    if value is None or value == "<>":
        return params
    try:
        claimed = Address.parse(xtext_decode(value))
    except AddressError:
        claimed = None
    if user is not None and claimed is not None and owns(ctx, user, claimed):
        return params
    log.info(logfmt("auth-param-ignored", user=user, claimed=value[:100]))
    return {**params, "AUTH": "<>"}


def sender_refusal(
    ctx: IntakeContext,
    mail_from: ReversePath,
    *,
    user: Address | None,
    size: int = 0,
    client_ip: str = "",
) -> Reply | None:
    """The first MAIL step: the reply refusing the sender, or None."""
    own = ctx.inbound.own if ctx.inbound is not None else None
    try:
        facts = SenderFacts(
            role=ctx.role,
            queue_has_room=ctx.queue.has_room(size),
            authenticated=user is not None,
            sender_is_local=mail_from is not None
            and ctx.resolver.is_local_domain(mail_from.domain),
            sender_owned=mail_from is None or (user is not None and owns(ctx, user, mail_from)),
            trusted_relay=own is not None and own.relayed(client_ip),
        )
    except StoreUnavailable as exc:  # an alias or account to look up: 451 4.3.0, try later
        log.warning(logfmt("store-unavailable", user=user, error=str(exc)))
        return exc.reply
    decision = mail_from_decision(facts)
    return None if isinstance(decision, Accept) else decision.reply


def open_transaction(
    ctx: IntakeContext,
    mail_from: ReversePath,
    *,
    user: Address | None,
    params: dict[str, str | None] | None = None,
    smtputf8: bool = False,
) -> Transaction | Reply:
    """The last MAIL step, once the sender is accepted: the transaction, with the message's
    place under the user's sending limits; or the reply when the limits refuse it."""
    # By keyword: the fourth field is `local` (a program on this machine), not `smtputf8`; given
    # positionally, an SMTPUTF8 transaction lost its flag (Received said ESMTPSA, not
    # UTF8SMTPSA, RFC 6531 §4.3) and was marked local.
    tx = Transaction(mail_from, dict(params or {}), user=user, smtputf8=smtputf8)
    if user is not None:
        reserved = reserve(ctx, str(user))
        if isinstance(reserved, Reply):
            return reserved
        tx.quota = reserved
    return tx


def begin(
    ctx: IntakeContext,
    mail_from: ReversePath,
    *,
    user: Address | None,
    params: dict[str, str | None] | None = None,
    smtputf8: bool = False,
    size: int = 0,
) -> Transaction | Reply:
    """Both MAIL steps, for a door with no checks that wait between them."""
    refusal = sender_refusal(ctx, mail_from, user=user, size=size)
    if refusal is not None:
        return refusal
    return open_transaction(ctx, mail_from, user=user, params=params, smtputf8=smtputf8)


def reserve(ctx: IntakeContext, who: str) -> Reservation | Reply | None:
    """The message's place under `who`'s sending limits (policy/ratelimit.py), if any."""
    if ctx.limiter is None:
        return None
    try:
        reserved = ctx.limiter.reserve_message(who)
    except StoreUnavailable as exc:  # [store] postgresql down: 451 4.3.0 at MAIL, try later
        log.warning(logfmt("store-unavailable", user=who, error=str(exc)))
        return exc.reply
    return reserved if isinstance(reserved, Reservation) else reserved.reply


def resolve_recipient(
    ctx: IntakeContext, tx: Transaction, address: Address, *, session: str = ""
) -> Resolution | Reply:
    """The first RCPT step: the address's resolution, or the reply refusing it."""
    if (
        address.local.lower() == "postmaster"
        and address.domain == ctx.settings.hostname.lower()
        and not ctx.resolver.is_local_domain(address.domain)
    ):
        # RFC 5321 §4.5.1: "RCPT TO:<Postmaster>" (the core names it postmaster@hostname)
        # must always be accepted: it goes to the postmaster of our first domain.
        address = Address("postmaster", ctx.postmaster_domain)
    try:
        resolution = ctx.resolver.resolve(address)
    except StoreUnavailable as exc:  # [store] postgresql down: 451 4.3.0, try later
        log.warning(logfmt("store-unavailable", session=session, error=str(exc)))
        return exc.reply
    facts = RecipientFacts(
        role=ctx.role,
        local_domain=not isinstance(resolution, NotLocal),
        known=isinstance(resolution, Local),
        authenticated=tx.user is not None or tx.local,
    )
    decision = rcpt_decision(facts)
    if not isinstance(decision, Accept):
        return decision.reply
    return resolution


def targets_of(address: Address, resolution: Resolution) -> tuple[Address, ...]:
    """Where the copies for `address` go: aliases expand to several mailboxes and forwards. An
    alias target without an account is queued too: it bounces at delivery, never vanishes."""
    if isinstance(resolution, Local):
        return (*resolution.mailboxes, *resolution.forwards, *resolution.unresolved)
    return (address,)


def add_recipient(
    ctx: IntakeContext,
    tx: Transaction,
    given: Address,
    resolution: Resolution,
    dsn: RecipientDsn,
    *,
    session: str,
) -> Reply | None:
    """The last RCPT step: the key verdict, the sending limit, then the rows of `given` (the
    address as RCPT TO gave it); None when the recipient is accepted, else the reply refusing
    it (the transaction is unchanged)."""
    try:
        keys = ctx.rcpt_keys if ctx.rcpt_keys is not None else ctx.keys
        if keys is not None and isinstance(resolution, Local):
            # A "no key" of `rcpt_keys` may come from memory: the commit asks again
            # (intake/message.py).
            verdict = recipient_keys(keys, resolution.mailboxes, now_utc(ctx))
            if verdict.defer_reason:
                # Issue 6 key failure policy "defer": the mail waits at the sender (4xx).
                log.warning(logfmt("key-failure", session=session, detail=verdict.defer_reason,
                                   action="deferred"))  # fmt: skip
                return DEFER_REPLY
            keyed = tx.keyed or verdict.keyed
        else:
            keyed = tx.keyed
        if tx.quota is not None and ctx.limiter is not None:
            # Reserved last, atomically, for every worker at once (policy/ratelimit.py).
            decision = ctx.limiter.reserve_recipient(tx.quota)
            if not isinstance(decision, Accept):
                return decision.reply
    except StoreUnavailable as exc:  # [store] postgresql down: 451 4.3.0, try later
        # The key verdict or the limit could not be asked: never a 250 for mail that might
        # be stored in the clear for a user with a key (RFC 5321 §4.2.5 451, RFC 3463 X.3.0).
        log.warning(logfmt("store-unavailable", session=session, error=str(exc)))
        return exc.reply
    tx.keyed = keyed
    tx.add(targets_of(given, resolution), given, dsn)
    return None


def recipient(
    ctx: IntakeContext, tx: Transaction, address: Address, dsn: RecipientDsn, *, session: str
) -> Reply | None:
    """Both RCPT steps, for a door with no checks that wait between them."""
    resolution = resolve_recipient(ctx, tx, address, session=session)
    if isinstance(resolution, Reply):
        return resolution
    return add_recipient(ctx, tx, address, resolution, dsn, session=session)


def settle(ctx: IntakeContext, quota: Reservation | None, reply: Reply | None) -> None:
    """The answer to a message settles its reservation: a 250 (`reply` None) keeps it as
    usage, any other answer gives it back."""
    if quota is None or ctx.limiter is None:
        return
    if reply is not None:
        ctx.limiter.release(quota)
    elif (alert := ctx.limiter.confirm(quota)) is not None:
        log.warning(logfmt("sending-spike", **alert.fields()))


def now_utc(ctx: IntakeContext) -> dt.datetime:
    return dt.datetime.fromtimestamp(ctx.clock.now(), dt.UTC)
