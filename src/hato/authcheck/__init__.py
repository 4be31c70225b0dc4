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
    from_domains,
    organizational_domain,
    strictest,
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
    "from_domains",
    "organizational_domain",
    "strictest",
]

# DKIM, ARC and Authentication-Results (dkim.py, arc.py, results.py).
from hato.authcheck.arc import ArcResult, ArcSealer, ArcStatus, verify_arc
from hato.authcheck.dkim import (
    DkimAlgorithm,
    DkimError,
    DkimResult,
    DkimSigner,
    DkimStatus,
    SigningKey,
    generate_key,
    load_signing_key,
    verify_dkim,
)
from hato.authcheck.results import (
    MethodResult,
    build_header,
    dkim_methods,
    find_forged,
    spf_method,
    without_fields,
)

__all__ += [
    "ArcResult",
    "ArcSealer",
    "ArcStatus",
    "DkimAlgorithm",
    "DkimError",
    "DkimResult",
    "DkimSigner",
    "DkimStatus",
    "MethodResult",
    "SigningKey",
    "build_header",
    "dkim_methods",
    "find_forged",
    "generate_key",
    "load_signing_key",
    "spf_method",
    "verify_arc",
    "verify_dkim",
    "without_fields",
]
