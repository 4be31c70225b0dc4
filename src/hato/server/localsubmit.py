"""Local submission: a message from a program on this machine (hato-sendmail, the maildrop).

Theory of operation. A local program has no password; who it is comes from the kernel: the
peer's uid (SO_PEERCRED) on the submission socket, the file's owner in the maildrop. As on the
submission port, an identity may only send as its own addresses (`SenderPolicy`):

- root and the user the server runs as may use any address (they could write the queue anyway);
- a Unix user is the account of its name in the server's first domain (the one -f and the
  From hato-sendmail adds default to) and may use what that account may: the address, its
  +tag forms, the aliases delivering to it in any of our domains (``RecipientResolver.owns``);
  never an account of the same name in another domain, which is another person's;
- more by grant: ``[local] send_as = { www-data = ["noreply@example.org"] }``.

The envelope sender (-f) and every address in the header From: are checked (RFC 5321 §3.3 and
RFC 5322 §3.6.2, the same rule as submission: 553 5.7.1), a null sender (bounces, vacation) is
allowed. Users other than root and the server's own have the sending limits of submission
(``[limits]``), counted under ``unix:NAME``. A refused recipient refuses the whole message, so a
sendmail caller that sees EX_NOUSER knows that nothing was sent.

One way in (issue 11): the recipients take the intake pipeline's RCPT steps
(intake/recipients.py: the address book, the key verdict, the sending limit, the rows of the
`Transaction`) and the message the end-of-message steps of the local door and its commit
(intake/finish.py: the DKIM signature of the author's domain, rspamd and the milters as the
submission role has them; intake/message.py: the copies, Delivered-To and a Received line, the
queue), as on SMTP. The recipients are known before the message: when one
of their mailboxes has an imported key the octets go into a `SealedScratch`, never the spool,
and the commit makes one encrypted copy per keyed recipient. A key that cannot be used under
the DEFER policy refuses the message for now (451 4.7.5: the maildrop keeps the file,
hato-sendmail exits EX_TEMPFAIL). The message is always queued (the runner delivers it).

May import the rooms below the server, intake among them.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import pwd
import re
from collections.abc import Callable, Mapping, Sequence

from hato.crypto import DEFER_DATA_REPLY, DEFER_REPLY, KeyLookup, SealedScratch
from hato.delivery.outbound_body import has_utf8_header
from hato.directory.resolver import Local, Resolution
from hato.intake.capture import MessageCapture
from hato.intake.context import IntakeContext, Recipients
from hato.intake.finish import Door, Submitted, end_of_message, open_capture
from hato.intake.headers import HeaderCapture, HeaderFilter
from hato.intake.miltercheck import MilterFilter
from hato.intake.protect import keyed_copies_needed
from hato.intake.recipients import add_recipient, reserve, resolve_recipient, settle, targets_of
from hato.intake.signing import OutboundSigner
from hato.intake.spamcheck import SpamFilter
from hato.intake.transaction import NO_DSN, Transaction
from hato.model import (
    Address,
    AddressError,
    Clock,
    Reply,
    ReversePath,
    Role,
    format_path,
    logfmt,
    parse_path,
)
from hato.policy import SendLimiter
from hato.queue import AUTH_PARAM, BodyWriter, QueueStore, QueueWriteError
from hato.smtp import ServerSettings

log = logging.getLogger("hato.control")

UNKNOWN_RCPT = Reply(550, "5.1.1", "mailbox unavailable")  # RFC 3463 §3.2 X.1.1
BAD_RCPT = Reply(553, "5.1.3", "bad recipient address syntax")  # RFC 3463 §3.2 X.1.3
REFUSED = Reply(550, "5.1.1", "recipient address rejected; nothing was queued")
TOO_BIG = Reply(552, "5.3.4", "message too big")  # RFC 1870 §6.1, RFC 3463 §3.4 X.3.4
NO_ROOM = Reply(452, "4.3.1", "insufficient system storage")  # RFC 3463 §3.4 X.3.1
BARE_EOL = Reply(554, "5.6.0", "message has a bare CR or LF")
# RFC 5322 §2.3: CR and LF appear only together as CRLF (and DESIGN.md: SMTP smuggling).
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class SubmitRefused(Exception):
    """The message is not queued: `reply` says why, `refused` names refused recipients."""

    def __init__(self, reply: Reply, refused: Mapping[str, Reply] | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.refused = dict(refused or {})


def login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class SenderPolicy:
    """Which addresses a local uid may send as (rules in the module docstring)."""

    def __init__(
        self,
        resolver: Recipients,
        domain: str,
        *,
        server_uid: int,
        grants: Mapping[str, Sequence[Address]] | None = None,
        names: Callable[[int], str | None] = login_name,
    ) -> None:
        self._resolver = resolver
        self._domain = domain.lower()
        self._server_uid = server_uid
        self._grants = {k: {_canon(a) for a in v} for k, v in (grants or {}).items()}
        self._names = names

    def trusted(self, uid: int | None) -> bool:
        """Root and the server's own user: any sender, no sending limits."""
        return uid is not None and uid in (0, self._server_uid)

    def name(self, uid: int | None) -> str | None:
        return None if uid is None else self._names(uid)

    def may_use(self, uid: int | None, address: Address) -> bool:
        if self.trusted(uid):
            return True
        name = self.name(uid)
        if name is None:
            return False  # no peer credentials, or a uid without a name: nobody's addresses
        if _canon(address) in self._grants.get(name, set()):
            return True
        # RFC 6409 §6.1: the sender must be one the submitting identity may use; the Unix user
        # is NAME@ the first domain, so alice@ another of our domains (another person's
        # account) is not hers.
        return self._resolver.owns(Address(name.lower(), self._domain), address)


def _canon(address: Address) -> Address:
    return Address(address.local.lower(), address.domain.lower())


class LocalBody:
    """A submitted message as its octets come: written to the queue's body file as they come
    (a file past 64 KiB: never held whole in memory), its header section kept for the sender
    checks (bounded, server.headers), the message whole for the DKIM signer when there is one
    (`capture`), and a bare CR or LF looked for across chunk borders. The file and the capture
    get it through the header filter every door has (intake/headers.py `HeaderFilter`: no
    Return-Path, Content-Length, Bcc or Resent-Bcc of the client's, RFC 5321 §4.4); the checks
    read the octets as they came."""

    def __init__(
        self, writer: BodyWriter | SealedScratch, capture: MessageCapture | None = None
    ) -> None:
        self.writer = writer
        self.capture = capture
        self.header = HeaderCapture()
        self.filter = HeaderFilter()
        self.size = 0
        self.ascii = True
        self.bare_eol = False
        self._last = b""  # the last two octets fed: the context of the next chunk

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._store(self.filter.feed(data))
        self.header.feed(data)
        self.size += len(data)
        self.ascii = self.ascii and data.isascii()
        if not self.bare_eol:
            self.bare_eol = self._has_bare_eol(self._last + data)
        self._last = (self._last + data)[-2:]

    def _store(self, data: bytes) -> None:
        self.writer.write(data)
        if self.capture is not None:
            self.capture.feed(data)

    def _has_bare_eol(self, text: bytes) -> bool:
        seen = len(self._last)  # octets judged with the chunk before (all but a final CR)
        for match in _BARE_EOL.finditer(text):
            at = match.start()
            if at < seen - 1 or (at == seen - 1 and text[at : at + 1] == b"\n"):
                continue  # judged before
            if at == len(text) - 1 and text.endswith(b"\r"):
                continue  # a CR at the end: its LF may be the next chunk's first octet
            return True
        return False

    def finish(self) -> None:
        """Every octet has come: a final CR is bare, a header section without its empty
        line ends here (the message is all header)."""
        self._store(self.filter.finish())
        if self._last.endswith(b"\r"):
            self.bare_eol = True
        if not self.header.done:
            self.header.feed(b"\r\n" if self.header.section().endswith(b"\r\n") else b"\r\n\r\n")

    def discard(self) -> None:
        self.writer.discard()
        if self.capture is not None:
            self.capture.abandon()


class LocalSubmitter:
    """The `submit` op of the control socket, and the maildrop's pickup."""

    def __init__(
        self,
        queue: QueueStore,
        resolver: Recipients,
        *,
        hostname: str,
        domain: str,
        clock: Clock,
        max_message_size: int = 50 * 1024 * 1024,
        senders: SenderPolicy | None = None,
        limiter: SendLimiter | None = None,
        keys: KeyLookup | None = None,
        signer: OutboundSigner | None = None,
        spam: SpamFilter | None = None,
        milters: tuple[MilterFilter, ...] = (),
    ) -> None:
        self._queue = queue
        self._hostname = hostname
        self._domain = domain
        self._clock = clock
        self._max = max_message_size
        self._senders = senders
        # A local program may send anywhere, as an authenticated user may (the RCPT steps'
        # relay control); its mail is always queued (no direct delivery). Its end-of-message
        # steps are the submission role's: `signer`, `spam` and `milters` (intake/finish.py).
        self._ctx = IntakeContext(
            role=Role.SUBMISSION,
            settings=ServerSettings(hostname=hostname),
            queue=queue,
            resolver=resolver,
            clock=clock,
            postmaster_domain=domain,
            limiter=limiter,
            keys=keys,
            signer=signer,
            spam=spam,
            milters=milters,
        )

    @property
    def context(self) -> IntakeContext:
        """The door's context (a reload gives it new end-of-message rooms: boot.build)."""
        return self._ctx

    def new_body(self, recipients: Sequence[str] = ()) -> LocalBody:
        """Where a submitted message's octets go as they come (control, maildrop): a sealed
        scratch file when one of `recipients` has a key (a keyed user's plaintext must never
        reach the spool: intake/protect.py), else the queue's body."""
        capture = open_capture(self._ctx, Door.LOCAL)
        if self._keyed(recipients):
            return LocalBody(SealedScratch(self._queue.messages_dir), capture)
        return LocalBody(self._queue.new_body(), capture)

    def _keyed(self, recipients: Sequence[str]) -> bool:
        """Whether a mailbox of `recipients` has a key (the RCPT key verdict, made again
        when the message is complete)."""
        keys = self._ctx.keys
        if keys is None or not recipients:
            return False
        tx, mailboxes = self._transaction(None, None), list[Address]()
        for resolution in self._resolve(tx, list(recipients))[0].values():
            if isinstance(resolution, Local):
                mailboxes.extend(resolution.mailboxes)
        now = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        verdict = keyed_copies_needed(keys, mailboxes, now)
        return verdict.keyed or bool(verdict.defer_reason)

    async def __call__(
        self,
        mail_from: ReversePath,
        recipients: list[str],
        message: bytes | LocalBody,
        *,
        uid: int | None,
    ) -> str:
        if isinstance(message, bytes):
            body = self.new_body(recipients)
            body.feed(message)
            body.finish()
        else:
            body = message
        try:
            return await self._submit(mail_from, recipients, body, uid)
        except BaseException:
            body.discard()  # not queued (commit took it otherwise, and discard is then moot)
            raise

    async def _submit(
        self, mail_from: ReversePath, recipients: list[str], body: LocalBody, uid: int | None
    ) -> str:
        tx = self._transaction(mail_from, uid)
        resolved, refused = self._resolve(tx, recipients)
        if refused:
            raise SubmitRefused(REFUSED, refused)
        if self._max and body.size > self._max:
            raise SubmitRefused(TOO_BIG)
        if body.bare_eol:
            raise SubmitRefused(BARE_EOL)
        self._check_senders(mail_from, body.header, uid)
        if not self._queue.has_room(body.size):
            raise SubmitRefused(NO_ROOM)
        if self._senders is not None and not self._senders.trusted(uid):
            # The submission port's sending limits, for a Unix user (not root or the server).
            reserved = reserve(self._ctx, f"unix:{self._senders.name(uid) or uid}")
            if isinstance(reserved, Reply):
                raise SubmitRefused(reserved)
            tx.quota = reserved
        try:
            self._add(tx, resolved, body, uid)
            queue_id = await self._commit(tx, body, uid)
        except BaseException:
            settle(self._ctx, tx.quota, REFUSED)  # not queued: it does not count
            raise
        settle(self._ctx, tx.quota, None)  # queued: the reservation is usage now
        return queue_id

    def _transaction(self, mail_from: ReversePath, uid: int | None) -> Transaction:
        # A local program is trusted as an authenticated user is (queue/bounce.py).
        params: dict[str, str | None] = {AUTH_PARAM: "local" if uid is None else f"uid:{uid}"}
        return Transaction(mail_from, params, local=True)

    def _add(
        self, tx: Transaction, resolved: dict[Address, Resolution], body: LocalBody, uid: int | None
    ) -> None:
        """The RCPT steps' last one for each recipient: the key verdict (intake/protect.py),
        the sending limit, the rows; a refusal refuses the whole message."""
        for address, resolution in resolved.items():
            reply = add_recipient(self._ctx, tx, address, resolution, NO_DSN, session=f"uid:{uid}")
            if reply is not None:
                # Issue 6 key failure policy "defer": the mail waits (RFC 3463 §3.8 X.7.5).
                raise SubmitRefused(DEFER_DATA_REPLY if reply is DEFER_REPLY else reply)
        if tx.keyed and not isinstance(body.writer, SealedScratch):
            # A key imported while the octets came: they are on disk in the clear already.
            raise SubmitRefused(DEFER_DATA_REPLY)

    def _check_senders(
        self, mail_from: ReversePath, header: HeaderCapture, uid: int | None
    ) -> None:
        """RFC 5321 §3.3 envelope sender, and the header section as on submission: From,
        Sender and Resent-* (RFC 5322 §3.6.2, §3.6.6) must be the user's own."""
        if self._senders is None or self._senders.trusted(uid):
            return
        senders = self._senders
        who = senders.name(uid) or f"uid {uid}"
        verdict = header.judge(
            Address(who, self._domain),
            lambda a: senders.may_use(uid, a),
            self._ctx.max_header_fields,
        )
        refusal = verdict.refusal
        if refusal is None and mail_from is not None and not senders.may_use(uid, mail_from):
            # RFC 3463 §3.8 X.7.1: the envelope sender is not this user's to use.
            refusal = Reply(553, "5.7.1", f"{mail_from} is not {who}'s to send as")
        if refusal is not None:
            log.warning(
                logfmt(
                    "local-sender-refused",
                    uid=uid,
                    user=who,
                    reason=verdict.reason or "envelope-sender",
                    reply=refusal,
                )
            )
            raise SubmitRefused(refusal)

    async def _commit(self, tx: Transaction, local: LocalBody, uid: int | None) -> str:
        params, mail_from = tx.params, tx.mail_from
        if not local.ascii:
            params["BODY"] = "8BITMIME"  # RFC 6152
        if any(a.needs_smtputf8 for a in tx.dests()) or (mail_from and mail_from.needs_smtputf8):
            params["SMTPUTF8"] = None  # RFC 6531 §3.4
        elif has_utf8_header(local.header.section() + b"\r\n"):
            # RFC 6532 §3 / RFC 6531 §3.4: UTF-8 header fields are SMTPUTF8 mail; a local
            # program cannot say so (Postfix's sendmail autodetects it the same way).
            params["SMTPUTF8"] = None
        who = "local" if uid is None else f"uid:{uid}"
        facts = Submitted(who, "", "", None, mail_from, params, Door.LOCAL)
        captured = local.capture.result() if local.capture is not None else None
        try:
            ids = await end_of_message(self._ctx, tx, local.writer, facts, captured=captured,
                                       trace=lambda qid: self._received(qid, uid),
                                       direct=False)  # fmt: skip
        except QueueWriteError as exc:
            raise SubmitRefused(exc.reply) from exc
        if isinstance(ids, Reply) and ids.code < 400:
            log.info(logfmt("submitted", id="", uid=uid, nrcpt=0, discarded=True,
                            **{"from": format_path(mail_from)}))  # fmt: skip
            return ""  # a milter discarded it: accepted, nothing stored
        if isinstance(ids, Reply):
            raise SubmitRefused(ids)
        queue_id = ",".join(ids)
        log.info(logfmt("submitted", id=queue_id, uid=uid, nrcpt=len(tx.recipients),
                        **{"from": format_path(mail_from)}))  # fmt: skip
        return queue_id

    def _received(self, queue_id: str, uid: int | None) -> bytes:
        # RFC 5321 §4.4: a trace line for mail that came from a local program.
        who = f" (Hato, from userid {uid})" if uid is not None else " (Hato)"
        stamp = email.utils.formatdate(self._clock.now(), localtime=False)
        return f"Received: by {self._hostname}{who}\r\n\tid {queue_id}; {stamp}\r\n".encode()

    def _resolve(
        self, tx: Transaction, recipients: list[str]
    ) -> tuple[dict[Address, Resolution], dict[str, Reply]]:
        """The RCPT steps' first one for each recipient: its resolution, or its refusal."""
        resolved: dict[Address, Resolution] = {}
        refused: dict[str, Reply] = {}
        for text in recipients:
            try:
                address = _qualify(text, self._domain)
            except AddressError:
                refused[text] = BAD_RCPT
                continue
            resolution = resolve_recipient(self._ctx, tx, address)
            if isinstance(resolution, Reply):
                refused[text] = resolution
            elif not targets_of(address, resolution):
                refused[text] = UNKNOWN_RCPT  # an alias that leads nowhere
            else:
                resolved.setdefault(address, resolution)
        return resolved, refused


def _qualify(text: str, domain: str) -> Address:
    """A recipient as a local program names it: "user" (one of ours) or "user@domain"."""
    text = text.strip().removeprefix("<").removesuffix(">")
    return Address.parse(text if "@" in text else f"{text}@{domain}")


def reverse_path(text: str, domain: str) -> ReversePath:
    """A sender as sendmail's -f gives it: "", "<>", "user" (ours) or "user@domain"."""
    text = text.strip()
    if text in ("", "<>"):
        return None
    if "@" not in text.strip("<>"):
        text = f"{text.strip('<>')}@{domain}"
    try:
        return parse_path(text if text.startswith("<") else f"<{text}>", allow_null=True)
    except AddressError as exc:
        raise SubmitRefused(Reply(553, "5.1.7", f"bad sender address: {exc}")) from None
