"""The mail transaction of an SMTP session: MAIL, RCPT and the end of the message, each handed
to the intake pipeline (intake/recipients.py at MAIL and RCPT, intake/finish.py at the end of
DATA), with the answers they give. `SmtpSession` (session.py) is this and the protocol glue
around it: the socket, the event pump, STARTTLS, AUTH, the timers.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hato.crypto import DEFER_REPLY, SealedScratch
from hato.directory.resolver import Resolution
from hato.intake.capture import LargeMessage, MessageCapture
from hato.intake.finish import Door, Submitted, end_of_message
from hato.intake.headers import MissingField, origin_fields
from hato.intake.incoming import Incoming
from hato.intake.received import TraceInfo, received_header, rfc5322_date
from hato.intake.recipients import (
    add_recipient,
    open_transaction,
    owns,
    resolve_recipient,
    sender_refusal,
    settle,
    trusted_params,
)
from hato.intake.transaction import Transaction
from hato.model import Address, RecipientDsn, Reply, ReversePath, logfmt
from hato.policy import Accept, Reservation
from hato.queue import QueueWriteError
from hato.server.context import SessionContext
from hato.server.milterearly import mail_checked, milter_mail, rcpt_checked, recipient_checks
from hato.server.screen import Screened
from hato.smtp import MailFrom, RcptTo, ServerConnection

if TYPE_CHECKING:
    from hato.queue import BodyWriter

log = logging.getLogger("hato.smtpd")

TEMP_FAILURE = Reply(451, "4.3.0", "Temporary local problem, please try again later")


class MailTransaction:
    """The MAIL, RCPT and end-of-message steps of `SmtpSession` (its state, declared here)."""

    ctx: SessionContext
    conn: ServerConnection
    client_ip: str
    session_id: str
    user: Address | None  # the authenticated account
    tx: Transaction | None  # after MAIL FROM: the envelope so far
    incoming: Incoming | None  # the message DATA is bringing
    capture: MessageCapture | None  # the message, for authentication checks or signing
    committing: Reservation | None  # that of the message being committed
    screened: Screened  # what the mx [screen] found before the greeting
    tls_detail: str
    messages: int
    closing: bool

    def _begin(self, work: Coroutine[Any, Any, None], name: str = "work") -> None:
        raise NotImplementedError  # the session's: run one decision that needs I/O

    def _on_mail(self, event: MailFrom) -> None:
        self._discard_body()
        self._reset_transaction()
        if "AUTH" in event.params:  # RFC 4954 §5 (intake/recipients.py)
            event = replace(event, params=trusted_params(self.ctx, event.params, user=self.user))
        refusal = sender_refusal(
            self.ctx, event.path, user=self.user, size=event.size or 0, client_ip=self.client_ip
        )
        if refusal is None and mail_checked(self.ctx):
            self._begin(self._mail_checks(event))  # the milters' word (milterearly.py)
            return
        self._mail_decided(event, refusal)

    async def _mail_checks(self, event: MailFrom) -> None:
        decision = await milter_mail(self.ctx, self._submitted(event.path, event.params))
        self._mail_decided(event, None if isinstance(decision, Accept) else decision.reply)

    def _mail_decided(self, event: MailFrom, refusal: Reply | None) -> None:
        tx = refusal or open_transaction(
            self.ctx, event.path, user=self.user, params=dict(event.params), smtputf8=event.smtputf8
        )
        if isinstance(tx, Transaction):
            self.tx = tx
            self.conn.accept()
            return
        log.info(logfmt("mail-refused", session=self.session_id, client=self.client_ip,
                        sender=event.path, user=self.user, reply=tx.code))  # fmt: skip
        self.conn.reply(tx)

    def _owns(self, address: Address) -> bool:
        return self.user is not None and owns(self.ctx, self.user, address)

    def _on_rcpt(self, event: RcptTo) -> None:
        if self.tx is None:
            self._refuse_rcpt(event, TEMP_FAILURE)  # cannot happen with a correct core
            return
        resolution = resolve_recipient(self.ctx, self.tx, event.address, session=self.session_id)
        if isinstance(resolution, Reply):
            self._refuse_rcpt(event, resolution)
        elif rcpt_checked(self.ctx):
            self._begin(self._rcpt_checks(event, resolution))  # greylisting, milters
        else:
            self._add_recipient(event, resolution)

    async def _rcpt_checks(self, event: RcptTo, resolution: Resolution) -> None:
        assert self.tx is not None
        facts = self._submitted(self.tx.mail_from, self.tx.params)
        reply = await recipient_checks(self.ctx, self.screened, facts, event.address)
        if reply is not None:
            self.conn.reply(reply)
        else:
            self._add_recipient(event, resolution)

    def _add_recipient(self, event: RcptTo, resolution: Resolution) -> None:
        if self.tx is None:
            return  # the transaction was reset while a check waited
        dsn = RecipientDsn.from_params(event.params)
        reply = add_recipient(self.ctx, self.tx, event.address, resolution, dsn,
                              session=self.session_id)  # fmt: skip
        if reply is None:
            self.conn.accept()
        elif reply is DEFER_REPLY:
            self.conn.reply(reply)  # logged as key-failure
        else:
            self._refuse_rcpt(event, reply)

    def _refuse_rcpt(self, event: RcptTo, reply: Reply) -> None:
        log.info(logfmt("rcpt-refused", session=self.session_id, client=self.client_ip,
                        rcpt=event.address, reply=reply.code))  # fmt: skip
        self.conn.reply(reply)

    def _on_message_end(self) -> None:
        """DATA ended: refuse a loop, a header section too large to judge whole, or (after
        AUTH) malformed or naming senders the user does not own; then commit (as a task)."""
        incoming, tx, self.incoming = self.incoming, self.tx, None
        if incoming is not None:
            rest = incoming.release()  # what the header filter held: the message is all header
            if self.capture is not None:
                self.capture.feed(rest)
        captured = self.capture.result() if self.capture is not None else None
        self.capture = None
        if incoming is None or tx is None or not tx.recipients:
            # Cannot happen with a correct core; refuse rather than accept blindly.
            self._refuse_message(incoming.body if incoming else None, TEMP_FAILURE)
            return
        refusal = incoming.judge(self.ctx, self.user, self._owns, self.session_id, tx.recipients)
        if refusal is not None:
            self._refuse_message(None, refusal)  # the body is discarded
            return
        self._begin(self._commit(tx, incoming.body, captured), name="commit")

    def _door(self) -> Door:
        return Door.MX if self.user is None else Door.SUBMISSION

    def _submitted(self, path: ReversePath, params: Mapping[str, str | None]) -> Submitted:
        helo, door = self.conn.hello_name or "", self._door()
        return Submitted(self.session_id, self.client_ip, helo, self.user, path, dict(params), door)

    def _refuse_message(self, body: BodyWriter | SealedScratch | None, reply: Reply) -> None:
        if body is not None:
            body.discard()
        self._reset_transaction()
        self.ctx.metrics.message(reply.code)
        self.conn.reply(reply)

    def _missing_fields(self) -> tuple[MissingField, ...]:
        """What a message DATA brings gets when its header section lacks it: on submission
        (after AUTH) Date and Message-ID (RFC 6409 §8.2, §8.3); nothing on mx (RFC 5321 §6.4:
        a relay leaves the header as it is)."""
        if self.user is None:
            return ()
        date = rfc5322_date(self.ctx.clock.now())
        return origin_fields(self.ctx.settings.hostname, date, secrets.token_hex(12))

    def _received(self, tx: Transaction, queue_id: str) -> bytes:
        info = TraceInfo(
            helo=self.conn.hello_name or "",
            client_ip=self.client_ip,
            hostname=self.ctx.settings.hostname,
            esmtp=self.conn.esmtp,
            tls=self.conn.tls_active,
            authenticated=self.user is not None,
            smtputf8=tx.smtputf8,
            tls_detail=self.tls_detail,
        )
        return received_header(info, queue_id, tx.originals, self.ctx.clock.now())

    async def _commit(
        self,
        tx: Transaction,
        body: BodyWriter | SealedScratch,
        captured: bytes | LargeMessage | None,
    ) -> None:
        """The pipeline's end-of-message steps and commit (intake/finish.py): only then 250."""
        facts = self._submitted(tx.mail_from, tx.params)
        self.committing, tx.quota = tx.quota, None  # settled by the answer (`_answer`)
        self.tx = None
        self._reset_transaction()
        try:
            ids = await end_of_message(self.ctx, tx, body, facts, captured=captured,
                                       trace=lambda qid: self._received(tx, qid))  # fmt: skip
        except QueueWriteError as exc:
            log.warning(logfmt("queue-write-failed", session=self.session_id, error=exc,
                               reply=exc.reply.code))  # fmt: skip
            self._answer(exc.reply)
            return
        if isinstance(ids, Reply):
            self._answer(ids if ids.code >= 400 else None)  # a milter's discard: 250
            return
        self.messages += 1
        encrypted = len(ids) - 1 if isinstance(body, SealedScratch) else None
        log.info(logfmt("accepted", session=self.session_id, id=",".join(ids),
                        client=self.client_ip, user=self.user, nrcpt=len(tx.recipients),
                        encrypted=encrypted))  # fmt: skip
        self._answer(None, f"Ok: queued as {' '.join(ids)}")

    def _answer(self, reply: Reply | None, text: str | None = None) -> None:
        """The answer to the end of a message (250 once it is durable)."""
        self.ctx.metrics.message(250 if reply is None else reply.code)
        quota, self.committing = self.committing, None
        settle(self.ctx, quota, reply)
        if self.closing:
            return
        if reply is None:
            self.conn.accept(text)
        else:
            self.conn.reply(reply)

    def _reset_transaction(self) -> None:
        tx, self.tx = self.tx, None
        if tx is not None:
            settle(self.ctx, tx.quota, TEMP_FAILURE)  # no 250: the reservation is given back

    def _discard_body(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None
        if self.capture is not None:
            self.capture.abandon()
        self.capture = None
