"""Delivery status notifications as message bytes (RFC 3464, RFC 6522): pure functions.

Must not import anything of hato but model.

A DSN is a `multipart/report; report-type=delivery-status` message (RFC 6522 §3) of three
parts: a human-readable explanation, the machine-readable `message/delivery-status` (RFC 3464
§2: per-message fields, then one block of per-recipient fields per recipient), and the
original message (`message/rfc822`) or only its header section (`text/rfc822-headers`,
RFC 6522 §4). Everything we write is US-ASCII except the returned original itself.

About a message that went with SMTPUTF8, or to or from a non-ASCII address, the DSN is the
internationalized one of RFC 6533: `message/global-delivery-status` (§6.1), whose address
fields use the `utf-8` address type with the address in UTF-8 (§3), the explanation in UTF-8,
and the original as `message/global` (RFC 6532 §3.7) or `message/global-headers` (RFC 6533
§6.3). Nothing is ever replaced by "?": a lossy address would name nobody.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hato.model import Address, QueuedMessage, QueuedRecipient, Reply, xtext_decode

# RFC 3463 §2: status-code = class "." subject "." detail
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
MAX_FIELD = 900  # octets of one field's value (RFC 5322 §2.1.1: a line is at most 998)
FOLD_AT = 76


class Action(enum.Enum):
    """RFC 3464 §2.3.3: what happened to one recipient (we never expand)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One recipient's block in a DSN."""

    recipient: QueuedRecipient
    action: Action
    reply: Reply | None = None  # the reply that decided it (None: a success, no detail)
    remote_mta: str | None = None  # the host that gave `reply`, if it came from a peer
    last_attempt: float | None = None  # when we last tried (wall clock)
    status: str | None = None  # the RFC 3463 status, when not the one `reply` implies


@dataclass(frozen=True, slots=True)
class Original:
    """The returned content: the whole message, or (`headers_only`) its header section."""

    data: bytes
    headers_only: bool


def status_code(action: Action, reply: Reply | None) -> str:
    """RFC 3464 §2.3.4: the RFC 3463 status; the reply's enhanced code when it has a valid
    one of the right class, else derived from the basic code (RFC 3463 §3.1: X.0.0)."""
    if action in (Action.DELIVERED, Action.RELAYED):
        return "2.0.0"
    if reply is None:
        return "4.0.0" if action is Action.DELAYED else "5.0.0"
    enhanced = reply.enhanced
    if enhanced and _STATUS.fullmatch(enhanced) and enhanced[0] == str(reply.code)[0]:
        return enhanced
    return f"{reply.code // 100}.0.0"


def rfc5322_date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time, in UTC."""
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return email.utils.format_datetime(when)


def _ascii(text: str) -> str:
    """Printable US-ASCII only (RFC 3464 §2.1.1: the fields are US-ASCII text lines)."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _printable(text: str) -> str:
    """No control characters; UTF-8 is kept (RFC 6533 §6.1: global-delivery-status fields
    are UTF-8 text lines)."""
    return "".join(ch if ch >= " " and ch != "\x7f" else "?" for ch in text)


def is_international(message: QueuedMessage, reports: Sequence[RecipientReport]) -> bool:
    """RFC 6533: whether the DSN about `reports` must be the internationalized one (the
    message went with SMTPUTF8, or an address to report is not ASCII)."""
    if "SMTPUTF8" in message.params:
        return True
    if message.mail_from is not None and message.mail_from.needs_smtputf8:
        return True
    for report in reports:
        rcpt = report.recipient
        if rcpt.address.needs_smtputf8 or rcpt.original.needs_smtputf8:
            return True
        if rcpt.dsn.orcpt is not None and not rcpt.dsn.orcpt.isascii():
            return True
    return False


def _field(name: str, value: str, *, utf8: bool = False) -> str:
    """One header-style field, folded at spaces (RFC 5322 §2.2.3), CRLF-terminated."""
    value = (_printable(value) if utf8 else _ascii(value))[:MAX_FIELD]
    line, out = f"{name}: ", []
    for word in value.split(" "):
        if len(line) + len(word) > FOLD_AT and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "  # continuation lines begin with white space
        line += word + " "
    out.append(line.rstrip(" "))
    return "\r\n".join(out) + "\r\n"


def _to(sender: Address) -> str:
    if sender.needs_smtputf8:
        # RFC 6532 §3.2: UTF-8 in a header field; the DSN then goes with SMTPUTF8.
        return f"To: <{sender}>\r\n"
    return _field("To", f"<{sender}>")


def _address(address: Address) -> str:
    if address.needs_smtputf8:
        # RFC 6533 §3: a non-ASCII address has the address type "utf-8", not "rfc822".
        return f"utf-8;{address}"
    return f"rfc822;{address}"


def _diagnostic(reply: Reply) -> str:
    # RFC 3464 §2.3.6: diagnostic-type ";" the remote reply as it came (all its lines).
    return "smtp; " + " ".join(reply.lines())


def _recipient_fields(report: RecipientReport, expires_at: float | None, utf8: bool) -> str:
    rcpt = report.recipient
    fields = []
    if rcpt.dsn.orcpt is not None:
        # RFC 3464 §2.3.1 / RFC 3461 §6.3: Original-Recipient is the ORCPT, decoded from xtext.
        # RFC 6533 §3: a utf-8 ORCPT is kept decoded, so the global DSN shows it in UTF-8.
        fields.append(_field("Original-Recipient", rcpt.dsn.orcpt, utf8=utf8))
    elif rcpt.original != rcpt.address:
        # No ORCPT, but an alias took the RCPT TO elsewhere: report the address as given.
        fields.append(_field("Original-Recipient", _address(rcpt.original), utf8=utf8))
    # RFC 3464 §2.3.2
    fields.append(_field("Final-Recipient", _address(rcpt.address), utf8=utf8))
    fields.append(_field("Action", report.action.value))  # RFC 3464 §2.3.3
    status = report.status or status_code(report.action, report.reply)
    fields.append(_field("Status", status))  # RFC 3464 §2.3.4
    if report.remote_mta:
        fields.append(_field("Remote-MTA", f"dns; {report.remote_mta}"))  # §2.3.5
    if report.reply is not None and report.remote_mta:
        fields.append(_field("Diagnostic-Code", _diagnostic(report.reply)))  # §2.3.6
    elif report.reply is not None:
        # Our own verdict (expiry, a local error): RFC 3464 §2.3.6 "X-" types are ours.
        fields.append(_field("Diagnostic-Code", f"X-Hato; {' '.join(report.reply.lines())}"))
    if report.last_attempt is not None:
        fields.append(_field("Last-Attempt-Date", rfc5322_date(report.last_attempt)))  # §2.3.7
    if report.action is Action.DELAYED and expires_at is not None:
        fields.append(_field("Will-Retry-Until", rfc5322_date(expires_at)))  # §2.3.9
    return "".join(fields)


def _explanation(
    hostname: str,
    reports: Sequence[RecipientReport],
    expires_at: float | None,
    returned: bool = True,
    utf8: bool = False,
) -> str:
    actions = {r.action for r in reports}
    lines = [f"This is the mail system at host {hostname}.", ""]
    if Action.FAILED in actions:
        lines += [
            "Your message could not be delivered to one or more of its recipients; this is",
            "a permanent error and the mail system has given up on them. The reason is given",
            "below for each" + (", and your message is attached." if returned else "."),
        ]
    if not returned:
        lines += ["Your message asked for REQUIRETLS: its content is not returned here."]
    if Action.DELAYED in actions:
        until = f" until {rfc5322_date(expires_at)}" if expires_at is not None else ""
        lines += [
            "Your message has not been delivered yet to one or more of its recipients. The",
            f"mail system will keep trying{until}; you need not send it again.",
        ]
    if actions & {Action.DELIVERED, Action.RELAYED}:
        lines += ["Your message was delivered as you asked to be told for these recipients."]
    lines += ["", "If you need help, write to the postmaster of this system.", ""]
    for report in reports:
        what = report.action.value
        if report.reply is not None:
            what = f"{what}: {' '.join(report.reply.lines())}"
        lines.append(f"<{report.recipient.address}>: {what}")
    clean = _printable if utf8 else _ascii
    return "".join(clean(line)[:MAX_FIELD] + "\r\n" for line in lines)


def subject(reports: Sequence[RecipientReport]) -> str:
    actions = {r.action for r in reports}
    if Action.FAILED in actions:
        return "Undelivered Mail Returned to Sender"
    if Action.DELAYED in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _boundary(dsn_id: str, parts: Sequence[bytes]) -> str:
    # RFC 2046 §5.1.1: the boundary must not occur in any part.
    n = 0
    while True:
        boundary = f"{dsn_id}.{n}/report"
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary
        n += 1


def build_dsn(
    message: QueuedMessage,
    reports: Sequence[RecipientReport],
    original: Original | None,
    *,
    hostname: str,
    now: float,
    dsn_id: str,
    expires_at: float | None = None,
) -> bytes:
    """The whole DSN message (header and body, CRLF lines) about `message` to its sender.

    `dsn_id` (the DSN's own queue id) makes its Message-ID; `expires_at` is when the queue
    gives the message up (Will-Retry-Until of "delayed" recipients). `original` None: nothing
    of the message is returned (RFC 6522 §3: the third part is optional).
    """
    if message.mail_from is None:
        # RFC 5321 §4.5.5 / RFC 3461 §6.1: a notification is never sent to the null path.
        raise ValueError("no DSN for a message from the null reverse-path")
    if not reports:
        raise ValueError("a DSN needs at least one recipient")
    utf8 = is_international(message, reports)
    explanation = _explanation(hostname, reports, expires_at, original is not None, utf8)
    explanation_bytes = explanation.encode("utf-8")
    per_message = [_field("Reporting-MTA", f"dns; {hostname}")]  # RFC 3464 §2.2.2
    per_message.append(_field("X-Hato-Queue-ID", message.queue_id))  # RFC 3464 §2.4 extension
    envid = message.params.get("ENVID")
    if envid:
        # RFC 3464 §2.2.1 / RFC 3461 §4.4: ENVID as the client gave it, decoded from xtext.
        per_message.append(_field("Original-Envelope-Id", xtext_decode(envid)))
    per_message.append(_field("Arrival-Date", rfc5322_date(message.received_at)))  # §2.2.5
    blocks = ["".join(per_message)] + [_recipient_fields(r, expires_at, utf8) for r in reports]
    # RFC 3464 §2.1: the per-message block, then each per-recipient block after an empty line.
    status = "\r\n".join(blocks).encode("utf-8")
    # RFC 6533 §6.1 (and RFC 6522 §3: report-type is the subtype of the report part).
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    boundary = _boundary(dsn_id, [original.data if original is not None else b""])
    head = "".join(
        [
            _field("From", f"Mail Delivery System <MAILER-DAEMON@{hostname}>"),
            _to(message.mail_from),
            _field("Subject", subject(reports)),
            _field("Date", rfc5322_date(now)),
            _field("Message-ID", f"<{dsn_id}@{hostname}>"),
            # RFC 3834 §5: a notification is an automatic reply, not to be answered in kind.
            _field("Auto-Submitted", "auto-replied"),
            _field("MIME-Version", "1.0"),
            # RFC 6522 §3 / RFC 3464 §3: multipart/report whose report-type is the subtype
            # of the machine-readable part.
            f"Content-Type: multipart/report; report-type={status_type.split('/')[1]};\r\n",
            f'\tboundary="{boundary}"\r\n',
            "\r\n",
            "This is a MIME-encapsulated message.\r\n",
            "\r\n",
        ]
    ).encode("utf-8")
    delimiter = f"--{boundary}\r\n".encode("ascii")
    parts = [
        head,
        delimiter,
        b"Content-Description: Notification\r\n",
        _text_type(explanation_bytes),
        explanation_bytes,
        b"\r\n",
        delimiter,
        b"Content-Description: Delivery report\r\n",
        f"Content-Type: {status_type}\r\n".encode("ascii"),
        _cte(status),
        status,
        b"\r\n",
        *([] if original is None else _returned_part(delimiter, original, reports, utf8)),
        f"--{boundary}--\r\n".encode("ascii"),
    ]
    return b"".join(parts)


def _returned_part(
    delimiter: bytes, original: Original, reports: Sequence[RecipientReport], utf8: bool
) -> list[bytes]:
    # RFC 6533 §6.3 and RFC 6532 §3.7: the internationalized types for an SMTPUTF8 original.
    if original.headers_only:
        returned_type = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Undelivered Message Headers"
    else:
        returned_type = "message/global" if utf8 else "message/rfc822"
        description = "Undelivered Message"
    if not any(r.action is Action.FAILED for r in reports):
        description = "Message Headers" if original.headers_only else "Message"
    # RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary; 8bit when any octet is.
    cte = "7bit" if original.data.isascii() else "8bit"
    return [
        delimiter,
        f"Content-Description: {description}\r\n".encode("ascii"),
        f"Content-Type: {returned_type}\r\n".encode("ascii"),
        f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii"),
        original.data,
        b"" if original.data.endswith(b"\r\n") or not original.data else b"\r\n",
        b"\r\n",
    ]


def _text_type(text: bytes) -> bytes:
    if text.isascii():
        return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    return b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"


def _cte(part: bytes) -> bytes:
    # RFC 2045 §6.1: 7bit (the default) only when every octet is; RFC 6533 §6.1 allows 8bit.
    return b"\r\n" if part.isascii() else b"Content-Transfer-Encoding: 8bit\r\n\r\n"
