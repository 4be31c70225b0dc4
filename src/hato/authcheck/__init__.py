"""Authentication checks: SPF (RFC 7208), DKIM, DMARC (RFC 7489), ARC.

May import model only (DNS only through `hato.model.dns.Resolver`).
"""

from hato.authcheck.dmarc import (
    Alignment,
    DkimOutcome,
    DmarcPolicy,
    DmarcRecord,
    DmarcRecordError,
    DmarcResult,
    DmarcStatus,
    FromProblem,
    SpfOutcome,
    evaluate,
    from_domain,
    organizational_domain,
)
from hato.authcheck.spf import SpfResult, SpfResultCode, check_helo, check_host, check_mail_from

__all__ = [
    "Alignment",
    "DkimOutcome",
    "DmarcPolicy",
    "DmarcRecord",
    "DmarcRecordError",
    "DmarcResult",
    "DmarcStatus",
    "FromProblem",
    "SpfOutcome",
    "SpfResult",
    "SpfResultCode",
    "check_helo",
    "check_host",
    "check_mail_from",
    "evaluate",
    "from_domain",
    "organizational_domain",
]
