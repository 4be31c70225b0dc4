"""What the reports are made of: one inbound DMARC evaluation, one outbound TLS session result,
and the store that keeps them until the next report (`ReportStore`).

Theory of operation: the mx session records one `DmarcEvent` per evaluated From domain that has
a DMARC record (RFC 7489 §7.2: reports go to that record's `rua`; without a record there is
no one to report to), and the outbound courier one `TlsEvent` per connection to an MX host
(RFC 8460 §4: successful sessions and failures, per policy domain). The store folds equal
events of the same hour into one row with a count (RFC 7489 §7.2.1: "count" of a record;
RFC 8460 §4.4 session counts), so its size follows the variety of senders, not the volume of
mail. Recording never raises: report data is worth less than a message.

Must not import anything of hato but model (and this room).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

HOUR = 3600  # the store's bucket: any report interval of whole hours can be cut from it


@dataclass(frozen=True, slots=True)
class DkimAuth:
    """One DKIM signature as RFC 7489 Appendix C DKIMAuthResultType reports it."""

    domain: str
    selector: str
    result: str  # none / pass / fail / policy / neutral / temperror / permerror


@dataclass(frozen=True, slots=True)
class PolicyPublished:
    """RFC 7489 Appendix C PolicyPublishedType: the record as we found it."""

    domain: str
    p: str
    sp: str
    pct: int
    adkim: str  # "r" or "s"
    aspf: str
    fo: str = "0"


@dataclass(frozen=True, slots=True)
class DmarcEvent:
    """One message's DMARC evaluation for one From domain (RFC 7489 §7.2 record row)."""

    time: float
    source_ip: str
    header_from: str
    envelope_from: str  # the MAIL FROM domain; "" for the null reverse path
    spf_domain: str
    spf_result: str  # none / neutral / pass / fail / softfail / temperror / permerror
    dkim: tuple[DkimAuth, ...]
    dkim_aligned: bool  # policy_evaluated dkim: pass when an aligned signature passed
    spf_aligned: bool
    disposition: str  # what we did: none / quarantine / reject
    reason: str  # "" or a PolicyOverrideType: sampled_out / local_policy
    policy: PolicyPublished
    count: int = 1


class PolicyType(enum.Enum):
    """RFC 8460 §4.3 policy-type."""

    STS = "sts"
    TLSA = "tlsa"
    NONE = "no-policy-found"


class TlsFailure(enum.Enum):
    """RFC 8460 §4.3 result-type (negotiation, policy and general failures)."""

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


@dataclass(frozen=True, slots=True)
class TlsEvent:
    """One attempt to reach an MX host of `policy_domain` (RFC 8460 §4.4): a success when
    `failure` is None."""

    time: float
    policy_domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]  # RFC 8460 §4.3 policy-string (the STS lines, TLSA RRs)
    mx_host: str
    receiving_ip: str
    failure: TlsFailure | None = None
    detail: str = ""  # failure-reason-code: our own words, for the domain's admin
    count: int = 1


class ReportStore(Protocol):
    """Where the events wait for the next report (reports/sqlite.py: SQLite in the data
    directory; a PostgreSQL store can take its place)."""

    def record_dmarc(self, event: DmarcEvent) -> None:
        """Count `event` (it may be kept in memory until the next flush); never raises, never
        waits for I/O."""
        ...

    def record_tls(self, event: TlsEvent) -> None:
        """Count `event`, as `record_dmarc`."""
        ...

    def flush(self) -> None:
        """Write what this store holds in memory; a failure is logged, never raised."""
        ...

    def dmarc_events(self, begin: float, end: float) -> Sequence[DmarcEvent]:
        """The counted events of the hours in [begin, end), equal ones summed (this store's
        own unflushed events included)."""
        ...

    def tls_events(self, begin: float, end: float) -> Sequence[TlsEvent]:
        """The counted events of the hours in [begin, end), equal ones summed."""
        ...

    def prune(self, before: float) -> int:
        """Forget the hours before `before` (reported); the number of rows removed."""
        ...

    def last_sent(self, kind: str) -> float | None:
        """The end of the last interval reported for `kind` ("dmarc", "tlsrpt")."""
        ...

    def mark_sent(self, kind: str, end: float) -> None: ...

    def claim_run(self, end: float) -> bool:
        """Take the report run of the interval ending at `end`; False when it was taken
        before (by another node on a shared store: one node sends each interval's reports)."""
        ...

    def close(self) -> None: ...


class Recorder(Protocol):
    """What the mx session and the outbound courier see of the store."""

    def record_dmarc(self, event: DmarcEvent) -> None: ...

    def record_tls(self, event: TlsEvent) -> None: ...
