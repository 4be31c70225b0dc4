"""Delivery: where a queued message goes next. Local delivery into Maildir++ mailboxes
(`maildir`, on the durable-file kit), the router that splits local from remote (`router`), and
outbound SMTP and LMTP: route planning (`outbound_route`) apart from the attempt
(`outbound_attempt`), the SMTP client driver and connection reuse. Who is a local recipient is
the directory's answer (hato.directory).

Must not import anything of hato but model, smtp, durable, directory and crypto
(shared/DESIGN.md).
"""

from hato.delivery.maildir import MaildirCourier

__all__ = ["MaildirCourier"]
