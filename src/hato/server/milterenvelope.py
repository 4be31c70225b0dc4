"""The recipients a milter adds (SMFIR_ADDRCPT, SMFIR_ADDRCPT_PAR) or deletes (SMFIR_DELRCPT)
at the end of the message, applied to the transaction's recipient list before the commit.

A deleted recipient is every row whose recipient, as the client gave it, is that address
(case-insensitive: RFC 5321 §2.4 lets us fold the domain, and we fold the local part as our
resolver does). An added one is resolved as a RCPT TO would be (aliases expand, a remote
address is relayed: the milter is the admin's); an unknown local address is not added, nor a
local one while users' keys are configured (its mail might have to be encrypted, and the
message was spooled for the others). Each skip is logged (`milter-envelope-change-ignored`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hato.directory.resolver import Local, NotLocal
from hato.milter.protocol import AddRecipient, DeleteRecipient
from hato.model import Address, logfmt
from hato.model.address import AddressError, parse_mailbox
from hato.server.context import SessionContext

log = logging.getLogger("hato.smtpd")


def _address(text: str) -> Address | None:
    try:
        return parse_mailbox(text.strip().removeprefix("<").removesuffix(">"))
    except AddressError:
        return None


def _key(address: Address) -> tuple[str, str]:
    return address.local.lower(), address.domain.lower()


def apply_envelope(
    ctx: SessionContext,
    recipients: list[tuple[Address, Address]],
    changes: Sequence[AddRecipient | DeleteRecipient],
    queue_id: str,
) -> None:
    """`recipients` ((destination, as given) pairs) with `changes` applied, in place."""
    for change in changes:
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
            if ctx.keys is not None:
                _ignored(queue_id, change, "users' keys are configured")
                continue
            targets = (*resolution.mailboxes, *resolution.forwards, *resolution.unresolved)
        elif isinstance(resolution, NotLocal):
            targets = (address,)
        else:
            _ignored(queue_id, change, "unknown local recipient")
            continue
        present = {dest for dest, _ in recipients}
        recipients.extend((dest, address) for dest in targets if dest not in present)
        log.info(logfmt("milter-rcpt-added", id=queue_id, recipient=address))


def _ignored(queue_id: str, change: AddRecipient | DeleteRecipient, reason: str) -> None:
    log.warning(logfmt("milter-envelope-change-ignored", id=queue_id,
                       change=type(change).__name__, address=change.address,
                       reason=reason))  # fmt: skip
