"""DMARC aggregate reports (RFC 7489 §7.2) and SMTP TLS reports (RFC 8460): recording what we
see, sending the reports, and reading the reports others send us (docs/reports.md).

Must not import anything of hato but model and authcheck (and this room): the composition root
(hato.boot) passes in the resolver and the way to queue a message.
"""

from hato.reports.records import (
    DkimAuth,
    DmarcEvent,
    PolicyPublished,
    PolicyType,
    Recorder,
    ReportStore,
    TlsEvent,
    TlsFailure,
)
from hato.reports.sqlite import REPORTS_DB, SqliteReportStore

__all__ = [
    "REPORTS_DB",
    "DkimAuth",
    "DmarcEvent",
    "PolicyPublished",
    "PolicyType",
    "Recorder",
    "ReportStore",
    "SqliteReportStore",
    "TlsEvent",
    "TlsFailure",
]
