"""From the checks' results to the events the reports are built of.

`dmarc_events` turns what the mx checks found (SPF, DKIM, one DMARC result per From domain)
and what we did with the message into one `DmarcEvent` per From domain whose DMARC record
asked for nothing less than a report: only pass and fail are reported (RFC 7489 Appendix C
DMARCResultType); a temperror was deferred (451) and comes back, a none/permerror had no
usable record and so no `rua`.

Must not import anything of hato but model and authcheck (and this room).
"""

from __future__ import annotations

from collections.abc import Sequence

from hato.authcheck import DkimResult, DmarcPolicy, DmarcResult, DmarcStatus, SpfResult
from hato.reports.records import DkimAuth, DmarcEvent, PolicyPublished

_STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}


def dmarc_events(
    results: Sequence[DmarcResult],
    *,
    time: float,
    source_ip: str,
    mail_from: str,
    spf: SpfResult,
    dkim: Sequence[DkimResult],
    applied: str,
) -> list[DmarcEvent]:
    """`applied`: the disposition we gave the message (none / quarantine / reject)."""
    auths = tuple(DkimAuth(r.domain.lower(), r.selector, r.status.value) for r in dkim if r.domain)
    envelope = mail_from.rpartition("@")[2].lower() if mail_from else ""
    events = []
    for result in results:
        record = result.record
        if record is None or result.status not in (DmarcStatus.PASS, DmarcStatus.FAIL):
            continue
        disposition = applied if result.status is DmarcStatus.FAIL else "none"
        events.append(
            DmarcEvent(
                time=time,
                source_ip=source_ip,
                header_from=result.from_domain,
                envelope_from=envelope,
                spf_domain=spf.domain.lower(),
                spf_result=spf.result.value,
                dkim=auths,
                dkim_aligned=result.dkim_aligned,
                spf_aligned=result.spf_aligned,
                disposition=disposition,
                reason=_reason(result, disposition),
                policy=PolicyPublished(
                    domain=result.policy_domain,
                    p=record.policy.value,
                    # RFC 7489 §6.3: sp defaults to p.
                    sp=(record.subdomain_policy or record.policy).value,
                    pct=record.pct,
                    adkim=record.adkim.value,
                    aspf=record.aspf.value,
                    fo=":".join(record.fo),
                ),
            )
        )
    return events


def _reason(result: DmarcResult, disposition: str) -> str:
    """RFC 7489 §7.2 / Appendix C PolicyOverrideType: why the disposition is not the policy's."""
    if result.status is not DmarcStatus.FAIL or result.policy is None:
        return ""
    if result.sampled_out:
        return "sampled_out"  # RFC 7489 §6.6.4: pct left this message out
    asked = result.disposition
    if asked is not DmarcPolicy.NONE and _STRENGTH[disposition] < _STRENGTH[asked.value]:
        return "local_policy"  # [authcheck] dmarc = quarantine / report
    return ""
