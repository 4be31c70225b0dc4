"""The messages that carry the reports: RFC 7489 §7.2.1.1 for DMARC (a gzip attachment named
receiver!policy-domain!begin!end.xml.gz, the Subject report processors file by) and RFC 8460
§5.3 for TLS-RPT (multipart/report; report-type="tlsrpt", with TLS-Report-Domain and
TLS-Report-Submitter header fields and an application/tlsrpt+gzip part).

Both are auto-generated (RFC 3834 §5: Auto-Submitted), from the [reports] from_address, and go
through the server's own queue like any mail (DKIM-signed for our domain).

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import email.policy
import email.utils
import gzip
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from hato.reports.aggregate import Submitter, file_name, subject
from hato.reports.tlsrpt import rfc3339


def compress(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # mtime 0: the same report gives the same octets


def _headers(msg: MIMEMultipart, sender: str, to: str, subject_text: str, now: float) -> None:
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject_text
    msg["Date"] = email.utils.formatdate(now, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid("report", sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5


def dmarc_message(
    submitter: Submitter,
    to: str,
    policy_domain: str,
    report_id: str,
    gz: bytes,
    *,
    begin: int,
    end: int,
    now: float,
) -> bytes:
    """RFC 7489 §7.2.1.1: the aggregate report `gz` (gzip of the XML) to `to`."""
    msg = MIMEMultipart("mixed")
    _headers(msg, submitter.email, to, subject(submitter, policy_domain, report_id), now)
    text = (
        f"This is a DMARC aggregate report (RFC 7489) for {policy_domain} from "
        f"{submitter.org_name}, covering {rfc3339(begin)} to {rfc3339(end)}.\n"
    )
    msg.attach(MIMEText(text, "plain", "utf-8"))
    name = file_name(submitter, policy_domain, begin, end)
    part = MIMEApplication(gz, "gzip", name=name)
    part.add_header("Content-Disposition", "attachment", filename=name)
    msg.attach(part)
    return msg.as_bytes(policy=email.policy.SMTP)


def tlsrpt_message(
    submitter: Submitter,
    to: str,
    policy_domain: str,
    report_id: str,
    gz: bytes,
    *,
    begin: int,
    end: int,
    now: float,
) -> bytes:
    """RFC 8460 §5.3: the TLS report `gz` (gzip of the JSON) to `to`."""
    msg = MIMEMultipart("report")
    msg.set_param("report-type", "tlsrpt")
    subject_text = (
        f"Report Domain: {policy_domain} Submitter: {submitter.domain} Report-ID: <{report_id}>"
    )
    _headers(msg, submitter.email, to, subject_text, now)
    msg["TLS-Report-Domain"] = policy_domain
    msg["TLS-Report-Submitter"] = submitter.domain
    text = (
        f"This is an SMTP TLS report (RFC 8460) for {policy_domain} from "
        f"{submitter.org_name}, covering {rfc3339(begin)} to {rfc3339(end)}.\n"
    )
    msg.attach(MIMEText(text, "plain", "utf-8"))
    # RFC 8460 §5.1: sender "!" policy-domain "!" begin "!" end "." extension.
    name = f"{submitter.domain}!{policy_domain}!{begin}!{end}.json.gz"
    part = MIMEApplication(gz, "tlsrpt+gzip", name=name)
    part.add_header("Content-Disposition", "attachment", filename=name)
    msg.attach(part)
    return msg.as_bytes(policy=email.policy.SMTP)
