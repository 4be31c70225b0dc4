"""Which TLS a connection to one MX host needs: the decision, as values.

Theory of operation: the inputs are the admin's per-domain level (`TlsLevel`, or None for the
default), the domain's MTA-STS policy (or None), the host's DANE lookup (or None when DANE is
off), whether the message asked for REQUIRETLS, and whether the route itself is trustworthy (an
MX answer that was DNSSEC-validated, or a relay the admin configured). `decide` answers a
`HopTls` (the level to connect with, and which policy demanded it) or a `PolicyRefusal` (this
host must not be used; its reply names the policy, and is kept on the recipient row).

Precedence, strongest first:
1. a configured level `none` turns TLS off (unless the message asks for REQUIRETLS);
2. DANE (RFC 7672) when TLSA records exist; RFC 8461 §2: DANE takes precedence over MTA-STS;
3. MTA-STS `enforce` (RFC 8461 §5): the host must match the policy's mx patterns and TLS must be
   PKIX-verified; `testing` only logs a mismatch;
4. the configured level (`may`, `encrypt`, `verify`, `dane`);
5. RFC 3207 opportunistic STARTTLS (`may`) by default.
REQUIRETLS (RFC 8689 §4.2.1) then raises anything below verified TLS to `verify`, and refuses a
host reached by a route that is neither DNSSEC-validated nor matched by an MTA-STS policy, with
a permanent 5.7.30 (the next host may still do; with none left the sender gets a DSN).
A message with `TLS-Required: No` (RFC 8689 §4.2.2, `tls_optional`) skips steps 2 and 3: the
recipient domain's DANE and MTA-STS policies are ignored; the admin's table level still holds
(a table level `dane` becomes `may`, since DANE is what the sender asked us to ignore).

Must not import anything of hato but model (and the delivery modules mtasts, dane).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from hato.delivery.dane import DaneLookup, DaneState
from hato.delivery.mtasts import StsMode, StsPolicy
from hato.model import Reply, logfmt

log = logging.getLogger("hato.delivery.tlspolicy")


class TlsLevel(enum.Enum):
    NONE = "none"  # plaintext only
    MAY = "may"  # RFC 3207: STARTTLS when offered, unverified; plaintext otherwise
    ENCRYPT = "encrypt"  # TLS required, certificate not verified
    VERIFY = "verify"  # TLS required, PKIX-verified certificate for the host name
    DANE = "dane"  # TLS required, leaf certificate matched against TLSA (RFC 7672)

    @property
    def requires_tls(self) -> bool:
        return self not in (TlsLevel.NONE, TlsLevel.MAY)


@dataclass(frozen=True, slots=True)
class HopTls:
    """Connect with `level`; `policy` names what demanded it (for the log and refusals)."""

    level: TlsLevel
    policy: str
    dane: DaneLookup | None = None

    @property
    def verified(self) -> bool:
        return self.level in (TlsLevel.VERIFY, TlsLevel.DANE)


@dataclass(frozen=True, slots=True)
class PolicyRefusal:
    """This host must not be used; `reply` names the policy: a 451 4.7.5 ("cryptographic
    failure", RFC 3463: policies and certificates get fixed), or REQUIRETLS's 550 5.7.30."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    domain: str
    configured: TlsLevel | None = None
    sts: StsPolicy | None = None
    requiretls: bool = False
    tls_optional: bool = False  # RFC 8689 §3 "TLS-Required: No" (ignored under REQUIRETLS)


def refusal(policy: str, detail: str) -> PolicyRefusal:
    return PolicyRefusal(Reply(451, "4.7.5", f"TLS required by {policy}: {detail}"))


def requiretls_refusal(detail: str) -> Reply:
    """RFC 8689 §5 / RFC 5248: 5.7.30 "REQUIRETLS support required"; permanent for this host."""
    return Reply(550, "5.7.30", f"REQUIRETLS support required: {detail}")


def decide(
    inputs: PolicyInputs, host: str, dane: DaneLookup | None, route_trusted: bool
) -> HopTls | PolicyRefusal:
    """The TLS to use towards `host` (an MX host name or a relay) for `inputs.domain`."""
    hop = _base(inputs, host, dane)
    if isinstance(hop, PolicyRefusal) or not inputs.requiretls:
        return hop
    # RFC 8689 §4.2.1: the MX must come from a DNSSEC-validated answer or match an MTA-STS
    # policy, and the TLS must be verified (PKIX or DANE).
    sts = inputs.sts
    sts_match = sts is not None and sts.mode is StsMode.ENFORCE and sts.matches(host)
    if not (route_trusted or sts_match or hop.level is TlsLevel.DANE):
        detail = f"the route to {host} is neither DNSSEC-validated nor MTA-STS"
        return PolicyRefusal(requiretls_refusal(detail))
    if not hop.verified:
        return HopTls(TlsLevel.VERIFY, "REQUIRETLS (RFC 8689)", hop.dane)
    return hop


def _base(inputs: PolicyInputs, host: str, dane: DaneLookup | None) -> HopTls | PolicyRefusal:
    domain, configured, sts = inputs.domain, inputs.configured, inputs.sts
    table = f"the TLS policy table entry for {domain}"
    if configured is TlsLevel.NONE:
        return HopTls(TlsLevel.NONE, table)
    if inputs.tls_optional and not inputs.requiretls:
        # RFC 8689 §4.2.2: "TLS-Required: No": the recipient's DANE and MTA-STS policies are
        # ignored; STARTTLS is still tried when offered (the table level, else `may`).
        if configured is None or configured is TlsLevel.DANE:
            return HopTls(TlsLevel.MAY, "TLS-Required: No (RFC 8689)")
        return HopTls(configured, table)
    if dane is not None and dane.state is DaneState.TEMPFAIL:
        # RFC 7672 §2.2: a TLSA lookup that failed must not become "no DANE".
        return refusal(f"DANE for {domain}", f"TLSA lookup for {host} failed")
    if dane is not None and dane.state is DaneState.ACTIVE:
        # RFC 8461 §2: DANE wins over MTA-STS; RFC 7672 §2.2: no fall back to plaintext.
        return HopTls(TlsLevel.DANE, f"DANE TLSA records of {host}", dane)
    if configured is TlsLevel.DANE and (dane is None or dane.state is DaneState.NONE):
        return refusal(table, f"no DNSSEC-validated TLSA records for {host}")
    if sts is not None and not sts.matches(host):
        if sts.mode is StsMode.ENFORCE:
            # RFC 8461 §4.1 / §5: only MX hosts matching the policy may be used.
            return refusal(f"MTA-STS policy of {domain}", f"{host} does not match its mx")
        log.warning(logfmt("mta-sts-testing-mismatch", domain=domain, host=host))
    if sts is not None and sts.mode is StsMode.ENFORCE:
        # RFC 8461 §4.2: PKIX-verified TLS with the MX host name.
        return HopTls(TlsLevel.VERIFY, f"MTA-STS policy of {domain}")
    if dane is not None and dane.state is DaneState.UNUSABLE:
        # RFC 7672 §2.2: unusable TLSA records still make TLS mandatory.
        level = configured if configured in (TlsLevel.VERIFY,) else TlsLevel.ENCRYPT
        return HopTls(level, f"DANE TLSA records of {host}", dane)
    if configured is not None:
        return HopTls(configured, table)
    # RFC 3207 §4: opportunistic STARTTLS by default.
    return HopTls(TlsLevel.MAY, "opportunistic TLS")
