"""A message's octets as DATA or BDAT brings them, and the end-of-message checks of its header
section (the first end-of-message steps of the pipeline, for a network door).

Theory of operation. Every chunk goes into the body (a queue body, or a sealed scratch file when
a recipient has a key: intake/protect.py) through the header filter (intake/headers.py
`HeaderFilter`: minus the Return-Path, Content-Length, Bcc and Resent-Bcc fields no client may
give us, RFC 5321 §4.4, and the Authentication-Results fields that claim our name, RFC 8601
§5: removed as they pass, never rewritten later; on submission plus the Date and Message-ID
a message came without, RFC 6409 §8.2, §8.3); what passes is what `feed` and `release`
return, for the capture the signer and the checks read (server/session.py). The octets as
they came are fed to the header capture (intake/headers.py, bounded) and to the trace-field
count (delivery/loops.py). At the end, `judge` refuses a loop (RFC 5321 §6.3: too many hops,
or a copy one of our aliases would forward again although the message already carries its
Delivered-To, which would otherwise bounce after the 250 to a sender anyone can forge) and a
header section the sender may not send (one From, and after AUTH only the user's own
addresses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from hato.crypto import SealedScratch
from hato.delivery.loops import FORWARD_LOOP, MAIL_LOOP, TraceFields, forwards_again
from hato.intake.context import IntakeContext
from hato.intake.headers import HeaderCapture, HeaderFilter, MissingField
from hato.model import Address, Reply, logfmt
from hato.queue import BodyWriter

log = logging.getLogger("hato.smtpd")


class Incoming:
    """One message being received (see the module docstring)."""

    def __init__(
        self,
        ctx: IntakeContext,
        *,
        keyed: bool,
        authserv_id: str,
        missing: tuple[MissingField, ...] = (),
    ) -> None:
        """`missing`: the fields to add when the header section lacks them (submission:
        headers.origin_fields)."""
        # A keyed recipient's plaintext must never reach the spool (intake/protect.py).
        self.body: BodyWriter | SealedScratch = (
            SealedScratch(ctx.queue.messages_dir) if keyed else ctx.queue.new_body()
        )
        self.filter = HeaderFilter(authserv_id, missing)
        self.headers = HeaderCapture()
        self.trace = TraceFields()  # the hop count (RFC 5321 §6.3)
        # The header section has passed the filter, the capture and the hop count: the
        # rest goes into the body alone (issue 15: most reads of a message, on the loop).
        self._past_header = False

    def feed(self, data: bytes) -> bytes:
        """Take a chunk; the octets that passed the header filter into the body (b"" while
        the header section is held back)."""
        if self._past_header:
            self.body.write(data)
            return data
        passed = self.filter.feed(data)
        self.body.write(passed)
        self.headers.feed(data)
        self.trace.feed(data)
        self._past_header = self.filter.passing and self.headers.done and self.trace.done
        return passed

    def release(self) -> bytes:
        """The message has ended: what the header filter still held goes into the body (a
        message that is all header), and is returned."""
        rest = self.filter.finish()
        self.body.write(rest)
        return rest

    def discard(self) -> None:
        self.body.discard()

    def judge(
        self,
        ctx: IntakeContext,
        user: Address | None,
        owns: Callable[[Address], bool],
        session: str,
        recipients: Sequence[tuple[Address, Address]] = (),
    ) -> Reply | None:
        """The refusal (the body is discarded then), or None. `recipients`: the transaction's
        (deliver-to, as addressed), for the loops of our forwarding aliases."""
        if self.trace.loops(ctx.hop_limit):
            # RFC 5321 §6.3: a loop is stopped; RFC 3463 X.4.6 routing loop detected.
            log.info(logfmt("message-refused", session=session, reason="mail-loop",
                            hops=self.trace.hops, reply=MAIL_LOOP.code))  # fmt: skip
            self.discard()
            return MAIL_LOOP
        local = ctx.resolver.is_local_domain
        for dest, original in recipients:
            alias = forwards_again(self.trace.delivered_to, dest, original, local)
            if alias is not None:
                # RFC 9228 §4 / RFC 5321 §6.3: it came back through this alias. Refused now, the
                # client's server tells its sender; accepted, our bounce went to a MAIL FROM
                # anyone may forge (backscatter).
                log.info(logfmt("message-refused", session=session, reason="forward-loop",
                                rcpt=alias, reply=FORWARD_LOOP.code))  # fmt: skip
                self.discard()
                return FORWARD_LOOP
        verdict = self.headers.judge(user, owns, ctx.max_header_fields)
        if verdict.refusal is not None:
            log.info(logfmt("message-refused", session=session, user=user,
                            reason=verdict.reason, reply=verdict.refusal.code))  # fmt: skip
            self.discard()
            return verdict.refusal
        if self.filter.removed:
            # RFC 8601 §5: a claim in our name that we did not make is removed.
            log.info(logfmt("forged-results-removed", session=session,
                            count=self.filter.removed))  # fmt: skip
        return None
