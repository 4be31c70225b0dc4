"""What an outbound attempt tells the TLS reports (RFC 8460): per connection to an MX host, a
success or a failure with its result-type, under the policy that applied (`[reports]`).

Theory of operation: the attempt calls `success` when a transaction ran over TLS, `failure`
when the TLS step failed (or the policy refused the host before connecting); the event names
the policy domain, its policy type and strings (RFC 8460 §4.3), the MX host and the address.
Only MX hops are reported: a relay or smarthost the admin configured is no domain's policy.
Recording goes to the report store (hato.reports), which never raises.

Must not import anything of hato but model, reports and delivery.
"""

from __future__ import annotations

from hato.delivery.dane import DaneState
from hato.delivery.smtp_client import TLS_NOT_OFFERED, TLS_PEER_REFUSED, DeliveryError
from hato.delivery.tlspolicy import HopTls, PolicyInputs, PolicyRefusal, TlsLevel
from hato.model import Clock
from hato.reports import PolicyType, Recorder, TlsEvent, TlsFailure


def policy_of(inputs: PolicyInputs, tls: HopTls | None) -> tuple[PolicyType, tuple[str, ...]]:
    """RFC 8460 §4.3 policy-type and policy-string: DANE's TLSA records, else the MTA-STS
    policy's lines (RFC 8461 §3.2), else no-policy-found."""
    dane = tls.dane if tls is not None else None
    if dane is not None and dane.state in (DaneState.ACTIVE, DaneState.UNUSABLE):
        strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in dane.records)
        return PolicyType.TLSA, strings
    sts = inputs.sts
    if sts is not None:
        lines = ["version: STSv1", f"mode: {sts.mode.value}"]
        lines += [f"mx: {mx}" for mx in sts.mx]
        lines.append(f"max_age: {sts.max_age}")
        return PolicyType.STS, tuple(lines)
    return PolicyType.NONE, ()


def failure_of(exc: DeliveryError, tls: HopTls) -> TlsFailure:
    """RFC 8460 §4.3: the result-type of a failed TLS step."""
    reply = exc.reply
    text = reply.text.lower()
    if reply == TLS_NOT_OFFERED or reply.enhanced == "4.7.10" or "starttls" in text:
        return TlsFailure.STARTTLS_NOT_SUPPORTED  # not offered, or refused (RFC 3207 §4)
    if reply == TLS_PEER_REFUSED or tls.level is TlsLevel.DANE:
        return TlsFailure.VALIDATION_FAILURE  # no TLSA record matched the certificate
    if "expired" in text:
        return TlsFailure.CERTIFICATE_EXPIRED
    if "mismatch" in text:  # OpenSSL: "Hostname mismatch", "IP address mismatch"
        return TlsFailure.CERTIFICATE_HOST_MISMATCH
    if "certificate verify failed" in text:
        return TlsFailure.CERTIFICATE_NOT_TRUSTED
    return TlsFailure.VALIDATION_FAILURE


def refusal_failure(refusal: PolicyRefusal) -> TlsFailure:
    """RFC 8460 §4.3: the result-type of a host the policy refused before connecting."""
    text = refusal.reply.text
    if "TLSA lookup" in text:
        return TlsFailure.DNSSEC_INVALID
    if "no DNSSEC-validated TLSA" in text:
        return TlsFailure.DANE_REQUIRED
    return TlsFailure.VALIDATION_FAILURE  # MTA-STS: the host does not match the policy's mx


class TlsReporting:
    """The attempt's door to the report store."""

    def __init__(self, recorder: Recorder, clock: Clock) -> None:
        self._recorder = recorder
        self._clock = clock

    def success(self, inputs: PolicyInputs, tls: HopTls, host: str, address: str) -> None:
        self._record(inputs, tls, host, address, None, "")

    def failure(
        self,
        inputs: PolicyInputs,
        tls: HopTls | None,
        host: str,
        address: str,
        failure: TlsFailure,
        detail: str,
    ) -> None:
        self._record(inputs, tls, host, address, failure, detail)

    def sts_failure(self, inputs: PolicyInputs, failure: TlsFailure, detail: str) -> None:
        """The domain's MTA-STS policy could not be had (RFC 8460 §4.3 policy failures)."""
        self._recorder.record_tls(
            TlsEvent(
                time=self._clock.now(),
                policy_domain=inputs.domain,
                policy_type=PolicyType.STS,
                policy_strings=(),
                mx_host="",
                receiving_ip="",
                failure=failure,
                detail=detail[:200],
            )
        )

    def _record(
        self,
        inputs: PolicyInputs,
        tls: HopTls | None,
        host: str,
        address: str,
        failure: TlsFailure | None,
        detail: str,
    ) -> None:
        kind, strings = policy_of(inputs, tls)
        self._recorder.record_tls(
            TlsEvent(
                time=self._clock.now(),
                policy_domain=inputs.domain,
                policy_type=kind,
                policy_strings=strings,
                mx_host=host,
                receiving_ip=address,
                failure=failure,
                detail=detail[:200],
            )
        )
