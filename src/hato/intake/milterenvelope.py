"""The envelope changes a milter asks for at the end of the message, applied to the
transaction before the commit (so the 250 still means what is durable is what the milters
left): a new sender (SMFIR_CHGFROM), recipients added (SMFIR_ADDRCPT, SMFIR_ADDRCPT_PAR) or
deleted (SMFIR_DELRCPT).

A new sender replaces MAIL FROM's path ("<>" makes it the null path); of its ESMTP
parameters RET and ENVID are taken (RFC 3461 §4.3, §4.4), the others ignored and logged, as
Postfix 3.3+ does (MILTER_README, cleanup_chg_from). Of an ADDRCPT_PAR's parameters NOTIFY
and ORCPT (RFC 3461 §4.1, §4.2) are taken for the added rows when RCPT TO would take them (DSN
offered, well formed), as Postfix's cleanup_addrcpt_par does; the others are ignored and
logged. A recipient added without them gets the RFC 3461 defaults.

A deleted recipient is every row whose recipient, as the client gave it, is that address
(case-insensitive: RFC 5321 §2.4 lets us fold the domain, and we fold the local part as our
resolver does). An added one is resolved as a RCPT TO would be (aliases expand, a remote
address is relayed without the relay check: the milter is the admin's, and Postfix too puts
a milter's recipients through its address rewriting and virtual aliases but not through
smtpd_recipient_restrictions: MILTER_README "When Postfix and Milters inspect an SMTP
session", cleanup_add_rcpt_par); an unknown local address is not added, nor a
local one with a key when the message was spooled in the clear (its mail must be stored
encrypted, issue 6). Each skip is logged (`milter-envelope-change-ignored`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence

from hato.directory.resolver import Local, NotLocal
from hato.intake.context import IntakeContext
from hato.intake.protect import recipient_keys
from hato.milter.protocol import AddRecipient, ChangeFrom, DeleteRecipient
from hato.model import Address, RecipientDsn, ReversePath, logfmt
from hato.model.address import AddressError, parse_mailbox
from hato.smtp.commands import rcpt_param_ok

log = logging.getLogger("hato.smtpd")

# RFC 3461 §4: xtext = *( xchar / hexchar ), for ENVID (§4.4, at most 100 characters).
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2}){1,100}")

EnvelopeChange = AddRecipient | DeleteRecipient | ChangeFrom


def _address(text: str) -> Address | None:
    try:
        return parse_mailbox(text.strip().removeprefix("<").removesuffix(">"))
    except AddressError:
        return None


def _key(address: Address) -> tuple[str, str]:
    return address.local.lower(), address.domain.lower()


def apply_envelope(
    ctx: IntakeContext,
    recipients: list[tuple[Address, Address]],
    changes: Sequence[EnvelopeChange],
    queue_id: str,
    sender: ReversePath,
    params: dict[str, str | None],
    *,
    sealed: bool,
    dsn: dict[Address, RecipientDsn] | None = None,
) -> ReversePath:
    """`recipients` ((destination, as given) pairs) and `params` (MAIL's) with `changes`
    applied, in place; the sender to queue with. `sealed`: the body is in encrypted scratch
    (intake/protect.py splits it per key at the commit, added recipients included). `dsn`:
    the transaction's RFC 3461 requests per destination, given an added row's NOTIFY/ORCPT."""
    for change in changes:
        if isinstance(change, ChangeFrom):
            sender = new_sender(change, sender, params, queue_id)
            continue
        address = _address(change.address)
        if address is None:
            _ignored(queue_id, change, "not an address")
            continue
        if isinstance(change, DeleteRecipient):
            recipients[:] = [row for row in recipients if _key(row[1]) != _key(address)]
            log.info(logfmt("milter-rcpt-deleted", id=queue_id, recipient=address))
            continue
        resolution = ctx.resolver.resolve(address)
        if isinstance(resolution, Local):
            if not sealed and _keyed(ctx, resolution.mailboxes):
                # Issue 6: its mail is stored encrypted, and this body was spooled in the
                # clear (no recipient at RCPT had a key): not added rather than leaked.
                _ignored(queue_id, change, "the recipient has a key")
                continue
            targets = (*resolution.mailboxes, *resolution.forwards, *resolution.unresolved)
        elif isinstance(resolution, NotLocal):
            targets = (address,)
        else:
            _ignored(queue_id, change, "unknown local recipient")
            continue
        present = {dest for dest, _ in recipients}
        request = added_dsn(ctx, change, queue_id, smtputf8="SMTPUTF8" in params)
        for dest in targets:
            if dest not in present:
                recipients.append((dest, address))
                if dsn is not None and request is not None:
                    dsn[dest] = request
        log.info(logfmt("milter-rcpt-added", id=queue_id, recipient=address,
                        notify=request.notify_param if request else None,
                        orcpt=request.orcpt if request else None))  # fmt: skip
    return sender


def added_dsn(
    ctx: IntakeContext, change: AddRecipient, queue_id: str, *, smtputf8: bool
) -> RecipientDsn | None:
    """The RFC 3461 request of an SMFIR_ADDRCPT_PAR's parameters: NOTIFY (§4.1) and ORCPT
    (§4.2) when RCPT TO would take them, each other one ignored and logged; None when none
    was taken (the row gets the defaults)."""
    taken: dict[str, str | None] = {}
    for arg in change.args.split():
        key, sep, value = arg.partition("=")
        key = key.upper()
        given = value if sep else None
        if (
            key in ("NOTIFY", "ORCPT")
            and key not in taken
            and rcpt_param_ok(key, given, ctx.settings, smtputf8=smtputf8)
        ):
            taken[key] = given
        else:
            _ignored(queue_id, change, f"ESMTP parameter {arg!r} ignored")
    return RecipientDsn.from_params(taken) if taken else None


def _keyed(ctx: IntakeContext, mailboxes: Sequence[Address]) -> bool:
    if ctx.keys is None:
        return False
    verdict = recipient_keys(
        ctx.keys, mailboxes, dt.datetime.fromtimestamp(ctx.clock.now(), dt.UTC)
    )
    return verdict.keyed or bool(verdict.defer_reason)


def new_sender(
    change: ChangeFrom, sender: ReversePath, params: dict[str, str | None], queue_id: str
) -> ReversePath:
    """SMFIR_CHGFROM: the new reverse-path, its RET and ENVID put into `params`."""
    text = change.address.strip()
    if text in ("", "<>"):
        new: ReversePath = None  # RFC 5321 §4.5.5: the null reverse-path
    else:
        new = _address(text)
        if new is None:
            _ignored(queue_id, change, "not an address")
            return sender
    for arg in change.args.split():
        key, _, value = arg.partition("=")
        key = key.upper()
        if key == "RET" and value.upper() in ("FULL", "HDRS"):
            params["RET"] = value.upper()  # RFC 3461 §4.3
        elif key == "ENVID" and _XTEXT.fullmatch(value):
            params["ENVID"] = value  # RFC 3461 §4.4, kept as sent (xtext)
        else:
            _ignored(queue_id, change, f"ESMTP parameter {arg!r} ignored")
    log.info(logfmt("milter-sender-changed", id=queue_id, sender=f"<{new or ''}>"))
    return new


def _ignored(queue_id: str, change: EnvelopeChange, reason: str) -> None:
    log.warning(logfmt("milter-envelope-change-ignored", id=queue_id,
                       change=type(change).__name__, address=change.address,
                       reason=reason))  # fmt: skip
