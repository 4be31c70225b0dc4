"""Why a recipient is still in the queue, in words an operator acts on (`hato queue list`).

Must not import anything of hato but model.
"""

from __future__ import annotations

from hato.model.queuestore import BODY_MISSING, RowView


def explain(row: RowView, now: float) -> str:
    """Why this recipient is still in the queue, in words an operator acts on."""
    if row.status == "delivered":
        return "delivered"
    if row.status == "failed":
        return f"failed ({row.last_reply}); a bounce was due"
    if row.status == "held":
        if row.last_reply == BODY_MISSING:
            return "held: the message body file is missing (delete it or restore the file)"
        return "held by the administrator (hato queue release to deliver it)"
    if row.busy:
        return "being delivered now"
    when = _in(row.next_attempt - now)
    if row.attempts == 0:
        return f"not tried yet; due {when}"
    return f"{_cause(row.last_reply)}; {row.attempts} attempt(s), next try {when}"


def _cause(last_reply: str | None) -> str:
    if not last_reply:
        return "deferred"
    parts = last_reply.split(" ", 2)
    enhanced = parts[1] if len(parts) > 1 and parts[1][:1].isdigit() else ""
    detail, _, _ = enhanced.partition(".")
    subject = enhanced[len(detail) + 1 :]
    # RFC 3463 §3.5 X.4.3 directory server failure, X.4.4 unable to route: DNS.
    if subject in ("4.3", "4.4"):
        return f"DNS lookup failed: {last_reply}"
    # RFC 3463 §3.8 X.7.5 cryptographic failure: the handshake itself broke (the reply says
    # why: an untrusted or mismatched certificate is fixed with a ca_file or the right name).
    if subject == "7.5" and "TLS handshake failed" in last_reply:
        return f"TLS with the receiving server failed: {last_reply}"
    # RFC 3463 §3.8 / RFC 3207 and RFC 8689: X.7.5 cryptographic failure, X.7.10 encryption
    # needed: the TLS policy (MTA-STS, DANE, REQUIRETLS) would not let it go in clear.
    if subject in ("7.5", "7.10"):
        return f"blocked by the TLS policy: {last_reply}"
    # RFC 3463 §3.5: X.4.1 no answer from host, X.4.2 bad connection.
    if subject in ("4.1", "4.2"):
        return f"could not connect to the receiving server: {last_reply}"
    return f"the last reply was {last_reply}"


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 90:
        return f"in {round(seconds)}s"
    if seconds < 5400:
        return f"in {round(seconds / 60)} min"
    return f"in {seconds / 3600:.1f} h"
